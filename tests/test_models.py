"""The tiny model factory: tokenizer, chat template, save/load through the Auto classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sicog.config import ModelConfig
from sicog.models import init_model, load_model, num_image_tokens, to_messages, train_tokenizer
from tiny import foundation_parts

TEXTS = [
    "Step 1: Extract salient content by identifying the key elements that define the image.\nA red circle.",
    "What colour is the square? Answer the question step-by-step.",
    "There are two shapes: a blue triangle at the top left and a green square near the border.",
] * 20
TINY = ModelConfig(vision_hidden=32, vision_layers=2, lm_hidden=32, lm_layers=1, heads=2, kv_heads=1, intermediate=64, vocab_size=400)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("model"), TEXTS, TINY, image_size=32, seed=0)


def _image(colour=(200, 20, 20), size=32):
    return Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8))


def test_tokenizer_round_trips_text_exactly():
    tok = train_tokenizer(TEXTS, 300)
    for text in ["Step 2: x\n\nStep 3:  two  spaces\tand tab\n", "unseen: ß é 漢字 ✓", TEXTS[0], ""]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    for special in ("<image>", "<|im_start|>", "<|im_end|>", "<|pad|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"


def test_chat_template_renders_image_first_and_generation_prompt(model_dir):
    _, processor = load_model(model_dir)
    messages = to_messages([{"from": "human", "value": "What colour?\n<image>"}], has_image=True)
    assert messages == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<|im_start|>user\n<image>\nWhat colour?<|im_end|>\n<|im_start|>assistant\n"
    text_only = to_messages([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], has_image=False)
    assert processor.apply_chat_template(text_only) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"


def test_save_load_round_trip_gives_identical_outputs(model_dir, tmp_path):
    model, processor = load_model(model_dir)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    messages = to_messages([{"from": "human", "value": "<image>\nDescribe."}], has_image=True)
    messages[0]["content"][0]["image"] = _image()
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again, processor2 = load_model(tmp_path)
    inputs2 = processor2.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    assert torch.equal(inputs["pixel_values"], inputs2["pixel_values"])
    with torch.no_grad():
        assert torch.equal(before, again(**inputs2).logits)


def test_init_is_seeded(tmp_path):
    a, _ = load_model(init_model(tmp_path / "a", TEXTS, TINY, image_size=32, seed=3))
    b, _ = load_model(init_model(tmp_path / "b", TEXTS, TINY, image_size=32, seed=3))
    c, _ = load_model(init_model(tmp_path / "c", TEXTS, TINY, image_size=32, seed=4))
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_image_token_count_is_patch_grid(model_dir):
    model, processor = load_model(model_dir)
    assert num_image_tokens(processor) == (32 // TINY.patch_size) ** 2 == 16
    messages = to_messages([{"from": "human", "value": "<image>\nDescribe."}], has_image=True)
    messages[0]["content"][0]["image"] = _image(size=48)  # other sizes are resized to the model's
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 32, 32)
    with torch.no_grad():  # the model accepts it: image features match image tokens
        model(**inputs)


def test_image_passes_through_unresampled(model_dir):
    _, processor = load_model(model_dir)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = processor.image_processor(Image.fromarray(pixels), return_tensors="pt")["pixel_values"][0]
    mean = np.array(processor.image_processor.image_mean)[:, None, None]
    std = np.array(processor.image_processor.image_std)[:, None, None]
    expected = (pixels.transpose(2, 0, 1) / 255.0 - mean) / std
    assert np.allclose(out.numpy(), expected, atol=1e-5)


def test_generate_stops_and_decodes(model_dir):
    model, processor = load_model(model_dir)
    messages = to_messages([{"from": "human", "value": "<image>\nDescribe."}], has_image=True)
    messages[0]["content"][0]["image"] = _image()
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 5
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_assemble_puts_every_weight_in_place_and_reloads_identically(tmp_path):
    from sicog.models import IMAGE_TOKEN, assemble_model

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    clip, lm = foundation_parts(tmp_path, TEXTS, 300, vision, text)
    out = assemble_model(tmp_path / "clip", tmp_path / "lm", tmp_path / "llava", seed=0)
    model, processor = load_model(out)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and model.config.vision_feature_layer == -2
    for k, v in clip.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[k], v), k
    lm_state = lm.state_dict()
    n = lm.config.vocab_size  # rows beyond n are the added "<image>" token's
    for k, v in model.model.language_model.state_dict().items():
        assert torch.equal(v[:n] if k == "embed_tokens.weight" else v, lm_state["model." + k]), k
    assert torch.equal(model.lm_head.weight[:n], lm.lm_head.weight)
    assert model.lm_head.weight.shape[0] == len(processor.tokenizer) >= n
    assert processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
    assert "generation" in processor.chat_template
    # reload is bit-identical, forward pass included
    again, processor2 = load_model(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    messages = to_messages([{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A red circle."}], has_image=True)
    messages[0]["content"][0]["image"] = _image()
    inputs = processor2.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
    # bf16 (the paper's): the same assembly in bf16 keeps every weight (rounded to bf16), is saved and
    # reloaded in bf16 at about half the bytes, and loads in the dtype each consumer asks for.
    half = assemble_model(tmp_path / "clip", tmp_path / "lm", tmp_path / "llava-bf16", seed=0, dtype="bfloat16")
    size = lambda folder: sum(p.stat().st_size for p in folder.glob("*.safetensors"))  # noqa: E731
    assert 0.45 < size(half) / size(out) < 0.55, (size(half), size(out))
    saved, _ = load_model(half, dtype="auto")  # as saved: what sampling loads
    assert {p.dtype for p in saved.parameters()} == {torch.bfloat16}
    for k, v in model.state_dict().items():  # the added "<image>" rows are drawn afresh: the checkpoints' rows must match
        rows = slice(0, n) if k.endswith(("embed_tokens.weight", "lm_head.weight")) else slice(None)
        assert torch.equal(saved.state_dict()[k][rows], v[rows].to(torch.bfloat16)), k
    assert {p.dtype for p in load_model(half)[0].parameters()} == {torch.float32}  # fp32 master weights for the plain Trainer


def test_weights_dtype_follows_train_bf16():
    """One switch: train.bf16 decides the dtype of assembling, saving, sampling, serving and evaluation;
    a training stage loads bf16 only under DeepSpeed (which keeps fp32 master weights itself)."""
    from sicog.config import TrainConfig

    assert (TrainConfig().weights_dtype, TrainConfig().load_dtype) == ("float32", "float32")
    assert (TrainConfig(bf16=True).weights_dtype, TrainConfig(bf16=True).load_dtype) == ("bfloat16", "float32")
    assert TrainConfig(bf16=True, deepspeed="zero2").load_dtype == "bfloat16"
