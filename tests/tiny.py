"""Tiny worlds and tiny random LLaVAs that the tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sicog.config import ModelConfig
from sicog.models import init_model, load_model, train_tokenizer

IMAGE_SIZE = 32
TINY = ModelConfig(vision_hidden=32, vision_layers=2, lm_hidden=32, lm_layers=1, heads=2, kv_heads=1, intermediate=64, vocab_size=400)
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
TINY_SAMPLER = ModelConfig(vision_hidden=32, lm_hidden=32, intermediate=64, heads=2, kv_heads=1, vocab_size=300)


def tiny_sampler_model(directory: Path, texts: list[str]) -> Path:
    """A tiny LLaVA whose outputs depend on its input.

    Random init (std 0.02) gives near-uniform logits whose greedy argmax is "\\n" for every input;
    scaled weights make outputs depend on the input, so determinism and resume tests can fail."""
    model_dir = init_model(directory, texts, TINY_SAMPLER, IMAGE_SIZE, seed=0)
    model, _ = load_model(model_dir)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(10)
    model.save_pretrained(model_dir)
    return model_dir


def foundation_parts(out: Path, texts: list[str], vocab_size: int, vision: dict, text: dict, generation: dict | None = None):
    """A CLIP vision tower and a Qwen2-architecture LM with its own trained tokenizer, random weights, saved
    to out/"clip" and out/"lm" as `sicog model assemble` reads them (the parts of a foundation model).
    `vision` and `text` are their configs' geometry, `generation` the LM's generation defaults; returns (clip, lm)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

    clip = CLIPVisionModel(CLIPVisionConfig(**vision))
    clip.save_pretrained(out / "clip")
    tok = train_tokenizer(texts, vocab_size)
    tok.save_pretrained(out / "lm")
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), tie_word_embeddings=False, **text))
    lm.generation_config.update(**(generation or {}))
    lm.save_pretrained(out / "lm")
    return clip, lm


def record(rid: str, image: str | None, question: str, answer: str) -> dict:
    """One LLaVA record with a human question and a gpt answer (`<image>` first when there is an image)."""
    rec = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
        rec["conversations"][0]["value"] = "<image>\n" + question
    return rec


def colour_world(root: Path, repeats: int, *, text_only: bool = False, marked: bool = False) -> list[dict]:
    """Solid-colour images under root/img, one colour question each, COLOURS x `repeats` (+ one
    text-only record). marked: a white corner block of growing size, so the images are not uniform
    (image corruptions change them)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (name, rgb) in enumerate(list(COLOURS.items()) * repeats):
        pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), rgb, dtype=np.uint8)
        if marked:
            pixels[: 8 + 2 * i, :8] = 255
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        records.append(record(f"r{i}", f"img/{i}.png", "What colour is the image?", f"The image is {name}."))
    if text_only:
        records.append(record("t0", None, "Say hello.", "Hello there."))
    return records


def tiny_model(directory: Path, records: list[dict]) -> Path:
    """The TINY LLaVA, its tokenizer trained on the records' text."""
    texts = [t["value"] for r in records for t in r["conversations"]]
    return Path(init_model(directory, texts, TINY, image_size=IMAGE_SIZE, seed=0))
