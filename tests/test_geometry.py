"""The paper's model geometry end to end, with random weights at reduced width and depth.

CLIP-ViT-L/14-336 as released (336-px input, 14-px patches, the real CLIPImageProcessor settings:
resize to shortest edge 336, centre crop 336 x 336) with features from layer -2: 577 vision tokens,
576 image tokens once CLS is dropped. On it, the paper's two backbones as released in shape:
Qwen2-7B-Instruct (Qwen2 config, ChatML template, no BOS) and Llama-3.1-8B-Instruct (llama3 RoPE
scaling, header-format template that opens with BOS, a tokenizer that adds BOS itself). Only widths,
depths and vocabularies are shrunk; tokenizers are trained offline and carry the real chat template
strings. Each backbone goes through `assemble_model`, a training stage, the local sampler and the
held-out evaluation: the code paths a real run takes.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from sicog.config import EvalConfig, StageConfig, TrainConfig
from sicog.errors import UserError
from sicog.evaluate.heldout import evaluate_heldout
from sicog.generate.local import LocalSampler
from sicog.generate.plan import plan_requests
from sicog.models import assemble_model, load_model, num_image_tokens, processed_image_size, to_messages
from sicog.prompts import CAPTION_DD
from sicog.records import read_jsonl
from sicog.train.data import IGNORE_INDEX, encode_record
from sicog.train.trainer import train_stage
from sicog.world.scenes import render_scene, sample_scene
from tiny import COLOURS, record

CLIP_IMAGE_SIZE, CLIP_PATCH = 336, 14  # CLIP-ViT-L/14-336
IMAGE_TOKENS = (CLIP_IMAGE_SIZE // CLIP_PATCH) ** 2  # 576: the patch grid (577 vision tokens minus CLS)
TRAIN = TrainConfig(max_length=1024)  # a record is 576 image tokens plus its text

# Qwen2-7B-Instruct's chat template, verbatim.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-3.1-8B-Instruct's chat template, verbatim.
LLAMA31_CHAT_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
QUESTION = "What colour is the image?"

# What each backbone's processor renders for one image question (the marked twin of its own format)
# and the token that ends an assistant turn (a label, and the eos the sampler stops at).
PROMPTS = {
    "qwen2": f"<|im_start|>user\n<image>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
    "llama3.1": f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\n{QUESTION}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
}
TURN_END = {"qwen2": "<|im_end|>", "llama3.1": "<|eot_id|>"}


def hub_tokenizer(
    texts: list[str], specials: list[str], chat_template: str, *, eos: str, bos: str | None = None, pad: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer shaped like a released one: its special tokens and chat template,
    and, with `bos`, a post-processor that prepends BOS to every encoding as Llama 3's does."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, chat_template=chat_template, clean_up_tokenization_spaces=False
    )


def _texts() -> list[str]:
    return [QUESTION, CAPTION_DD, "What is the background colour?"] + [f"The image is {name}." for name in COLOURS]


def save_qwen2(directory) -> None:
    """Qwen2-7B-Instruct's shape: GQA, untied embeddings, a vocabulary with spare rows (152064 rows for
    151646 tokens, so "<image>" needs no resize)."""
    tok = hub_tokenizer(_texts(), QWEN2_SPECIALS, QWEN2_CHAT_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")
    tok.save_pretrained(directory)
    config = Qwen2Config(
        vocab_size=len(tok) + 64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)


def save_llama31(directory) -> None:
    """Llama-3.1-8B-Instruct's shape: GQA, llama3 RoPE scaling to 128k positions, untied embeddings,
    no pad token, a vocabulary without spare rows (so "<image>" resizes the embeddings)."""
    tok = hub_tokenizer(_texts(), LLAMA3_SPECIALS, LLAMA31_CHAT_TEMPLATE, eos="<|eot_id|>", bos="<|begin_of_text|>")
    tok.save_pretrained(directory)
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=rope,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")],
    )
    LlamaForCausalLM(config).save_pretrained(directory)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """CLIP-ViT-L/14-336 at 64 wide and 2 deep, with the released preprocessing settings."""
    directory = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH
    )
    CLIPVisionModel(config).save_pretrained(directory)
    crop = {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size=crop, do_center_crop=True).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Non-square images (landscape and portrait: resized, then centre-cropped), one colour question
    each, and a held-out world of one scene with a VQA row and a caption row."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    records = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        width, height = (448, 336) if i % 2 == 0 else (300, 420)
        Image.fromarray(np.full((height, width, 3), rgb, dtype=np.uint8)).save(root / "img" / f"{i}.png")
        records.append(record(f"r{i}", f"img/{i}.png", QUESTION, f"The image is {name}."))
    scene = sample_scene(random.Random(0), max_objects=3)
    render_scene(scene, 400).save(root / "img" / "heldout.png")
    heldout = [
        {"id": "h-q0", "image": "img/heldout.png", "task": "vqa", "question": "What is the background colour?", "answer": scene["background"], "scene": scene},
        {"id": "h-cap", "image": "img/heldout.png", "task": "caption", "scene": scene},
    ]
    (root / "heldout.jsonl").write_text("".join(json.dumps(row) + "\n" for row in heldout))
    return root, records


@pytest.fixture(scope="module", params=["qwen2", "llama3.1"])
def backbone(request, clip_dir, tmp_path_factory):
    """(name, LLaVA directory) assembled from the CLIP tower and the backbone's LM."""
    name = request.param
    lm_dir = tmp_path_factory.mktemp(f"lm-{name}")
    {"qwen2": save_qwen2, "llama3.1": save_llama31}[name](lm_dir)
    return name, assemble_model(clip_dir, lm_dir, tmp_path_factory.mktemp(f"llava-{name}"), seed=0)


def test_a_processed_image_is_576_tokens_of_the_clip_grid(backbone, data):
    name, model_dir = backbone
    root, records = data
    model, processor = load_model(model_dir)
    assert processed_image_size(processor.image_processor) == (CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
    assert num_image_tokens(processor) == IMAGE_TOKENS == model.config.image_seq_length
    messages = to_messages(records[0]["conversations"][:1], has_image=True)
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == PROMPTS[name]
    feature = encode_record(records[0], processor, root, max_length=TRAIN.max_length)
    ids = torch.tensor(feature["input_ids"])
    assert int((ids == model.config.image_token_id).sum()) == IMAGE_TOKENS
    assert tuple(feature["pixel_values"].shape) == (3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
    labelled = [t for t in feature["labels"] if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(labelled) == "The image is red." + TURN_END[name]  # the assistant turn only
    pixels = feature["pixel_values"][None]
    with torch.no_grad():
        vision = model.model.vision_tower(pixels, output_hidden_states=True)
        assert vision.hidden_states[model.config.vision_feature_layer].shape[1] == IMAGE_TOKENS + 1  # + CLS
        # the model accepts the sample: one image feature per image token
        out = model(input_ids=ids[None], pixel_values=pixels, labels=torch.tensor(feature["labels"])[None])
    assert torch.isfinite(out.loss)


def _spy_on_generate(sampler: LocalSampler) -> list[torch.Tensor]:
    """The input_ids of every generate call the sampler makes."""
    seen, generate = [], sampler.model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"].cpu())
        return generate(**kwargs)

    sampler.model.generate = spy
    return seen


def test_stage_trains_samples_and_evaluates(backbone, data, tmp_path):
    name, model_dir = backbone
    root, records = data
    stage = StageConfig(learning_rate=1e-3, max_steps=2, batch_size=2, warmup_ratio=0.0)
    log = train_stage(model_dir, records, root, tmp_path / "stage", stage, train=TRAIN, seed=0, name=name)
    assert log["steps"] == 2 and log["records"] == len(records) and not log["skipped"]
    assert all(np.isfinite(loss) for _, loss in log["loss_history"])

    sampler = LocalSampler(tmp_path / "stage", root, max_new_tokens=4)
    seen = _spy_on_generate(sampler)
    rows = list(sampler.generate(plan_requests(records[:1], "caption", {"dd": 1}, cycle_seed=0)))
    assert len(rows) == 1 and isinstance(rows[0]["text"], str) and "error" not in rows[0]
    (prompt,) = seen
    image_id = sampler.model.config.image_token_id
    assert int((prompt == image_id).sum()) == IMAGE_TOKENS
    bos = sampler.tokenizer.bos_token_id
    if bos is not None:  # Llama: the template's BOS only, not a second one from the tokenizer
        assert sampler.tokenizer("x")["input_ids"][0] == bos  # (the tokenizer does add one by itself)
        assert prompt[0, 0] == bos and int((prompt == bos).sum()) == 1

    rows = list(read_jsonl(root / "heldout.jsonl"))
    metrics = evaluate_heldout(tmp_path / "stage", rows, root, tmp_path / "predictions.jsonl", EvalConfig(max_new_tokens=4, batch_size=2))
    assert (metrics["vqa_n"], metrics["caption_n"], metrics["errors"]) == (1, 1, 0)
    assert 0 <= metrics["vqa_accuracy"] <= 1 and 0 <= metrics["caption_attribute_recall"] <= 1
    assert len(list(read_jsonl(tmp_path / "predictions.jsonl"))) == 2


def _saved_dtypes(model_dir) -> tuple[set, set]:
    """(dtypes of the tensors in model.safetensors, dtypes config.json names for the model and its
    vision and text parts)."""
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        stored = {f.get_slice(key).get_dtype() for key in f.keys()}
    config = json.loads((model_dir / "config.json").read_text())
    return stored, {config["dtype"], config["vision_config"]["dtype"], config["text_config"]["dtype"]}


@pytest.mark.parametrize("bf16, stored, named", [(True, "BF16", "bfloat16"), (False, "F32", "float32")])
def test_a_stage_saves_weights_in_the_dtype_it_trained_in(clip_dir, data, tmp_path, bf16, stored, named):
    root, records = data
    save_qwen2(tmp_path / "lm")
    model_dir = assemble_model(clip_dir, tmp_path / "lm", tmp_path / "llava", seed=0)
    stage = StageConfig(learning_rate=1e-3, max_steps=1, batch_size=2, trainable="projector")
    train_stage(model_dir, records, root, tmp_path / "stage", stage, train=TrainConfig(max_length=1024, bf16=bf16), seed=0, name="align")
    assert _saved_dtypes(tmp_path / "stage") == ({stored}, {named})
    model, _ = load_model(tmp_path / "stage")  # loads (upcast to fp32 for the CPU sampler)
    assert model.dtype == torch.float32


def test_an_unknown_chat_template_is_refused_before_any_weight_loads(clip_dir, tmp_path):
    mistral = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
    hub_tokenizer(_texts(), ["<s>", "</s>"], mistral, eos="</s>", bos="<s>").save_pretrained(tmp_path / "lm")  # no weights at all
    with pytest.raises(UserError, match="no {% generation %} markers") as refused:
        assemble_model(clip_dir, tmp_path / "lm", tmp_path / "llava")
    assert "\n" not in str(refused.value) and not (tmp_path / "llava").exists()
