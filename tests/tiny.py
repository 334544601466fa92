"""The tiny random LLaVA that the sampling tests share."""

from __future__ import annotations

from pathlib import Path

import torch

from sicog.config import ModelConfig
from sicog.models import init_model, load_model

IMAGE_SIZE = 32
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
