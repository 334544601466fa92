"""Benchmark: batched local sampling vs one candidate at a time (target: >= 3x output tokens/s).

Both sides run the same `LocalSampler` code on the same requests, with the same seeds, on the
demo-sized tiny LLaVA (default `ModelConfig`, 64x64 images, random weights); only `batch_size`
differs. A random model would stop at eos after a varying number of tokens, so both sides are forced
to emit exactly `--new-tokens` tokens per candidate (min_new_tokens = max_new_tokens): the
comparison measures decoding throughput, not how talkative the weights happen to be.

Run: python benchmarks/sampling.py [--requests 64] [--new-tokens 64] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from sicog.config import ModelConfig, SampleConfig
from sicog.generate.local import LocalSampler
from sicog.generate.plan import plan_requests
from sicog.models import init_model
from sicog.prompts import CAPTION_COD, CAPTION_DD

IMAGE_SIZE = 64  # the demo world's image side (WorldConfig.image_size)


def _tokenizer_texts() -> list[str]:
    """Enough caption-like text for the default 1,024-token BPE vocabulary."""
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "pink"]
    shapes = ["circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring"]
    places = ["top left", "top right", "bottom left", "bottom right", "centre", "left edge", "right edge"]
    texts = [CAPTION_COD, CAPTION_DD]
    for i, c in enumerate(colours):
        for j, s in enumerate(shapes):
            p = places[(i + j) % len(places)]
            texts.append(f"A {c} {s} sits in the {p} of the image, on a {colours[(i + 3) % len(colours)]} background.")
    return texts


def _make_inputs(root: Path, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        name = f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(root / name)
        records.append({"id": f"bench-{i}", "image": name, "conversations": [{"from": "human", "value": "<image>\nDescribe."}]})
    return records


def _run(sampler: LocalSampler, requests: list[dict]) -> tuple[float, int, list[dict]]:
    sampler.output_tokens = 0
    start = time.perf_counter()
    rows = list(sampler.generate(requests))
    return time.perf_counter() - start, sampler.output_tokens, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64, help="caption candidates to sample")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per candidate")
    ap.add_argument("--batch-size", type=int, default=SampleConfig().batch_size, help="batched side's batch size")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        model_dir = init_model(tmp / "model", _tokenizer_texts(), ModelConfig(), IMAGE_SIZE, seed=0)
        records = _make_inputs(tmp / "images", args.requests)
        # A 2 CoD + 1 DD plan would give 3 candidates per image; one CoD per image keeps the count exact.
        requests = plan_requests(records, "caption", {"cod": 1}, cycle_seed=0)
        kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
        batched = LocalSampler(model_dir, tmp / "images", batch_size=args.batch_size, **kw)
        single = LocalSampler(model_dir, tmp / "images", batch_size=1, **kw)
        _run(batched, requests[:2])  # warm-up: first-call allocations and kernel selection
        _run(single, requests[:2])

        t_b, n_b, rows_b = _run(batched, requests)
        t_s, n_s, rows_s = _run(single, requests)

    params = sum(p.numel() for p in batched.model.parameters())
    same = {(r["id"], r["index"]): r["text"] for r in rows_b} == {(r["id"], r["index"]): r["text"] for r in rows_s}
    rate_b, rate_s = n_b / t_b, n_s / t_s
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"model: tiny LLaVA, {params / 1e6:.2f}M parameters, {IMAGE_SIZE}x{IMAGE_SIZE} images; torch threads {torch.get_num_threads()}")
    print(f"requests: {len(requests)} caption candidates x {args.new_tokens} new tokens")
    print(f"batched (batch {args.batch_size}):  {n_b} tokens in {t_b:.2f} s = {rate_b:,.0f} output tokens/s")
    print(f"one at a time (batch 1): {n_s} tokens in {t_s:.2f} s = {rate_s:,.0f} output tokens/s")
    print(f"ratio: {rate_b / rate_s:.1f}x (target >= 3x) -> {'PASS' if rate_b / rate_s >= 3 else 'FAIL'}")
    print(f"same texts on both sides (per-candidate seeds): {same}")
    print(f"peak RSS: {peak_rss_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
