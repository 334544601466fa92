"""Benchmark: per-step Gumbel noise, CPU generator streams (old) vs the counter-based hash (new).

One decoding step of the sampler's noise processor at Qwen2's vocabulary (152,064) and batch 16:
the old `GumbelNoise` drew one vocabulary-sized Exp(1) vector per row from that row's CPU
`torch.Generator`, took -log and copied the result to the logits' device; the new one
(`sicog.generate.noise.GumbelNoise`) hashes (seed, step, token id) where the logits are. Both sides
run in the same process, step after step interleaved (old, new, old, new, ...), so that load from
other processes on a shared machine hits both alike; the figure is the ratio of median step times.

On the CPU this measures only the arithmetic. The GPU benefit, that no batch x vocabulary tensor
crosses from host to device each step (9.7 MB per step here), is not measurable on a CPU machine:
run with --device cuda where there is one.

Run: python benchmarks/gumbel.py [--vocab 152064] [--batch 16] [--steps 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sicog.generate.noise import GumbelNoise


class CpuGeneratorNoise:
    """The old processor, verbatim: per-row CPU generator streams, then a host-to-device copy."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        exp = torch.stack([torch.empty(vocab).exponential_(generator=g) for g in self.generators])
        noise = -exp.clamp_min(torch.finfo(torch.float32).tiny).log()
        return scores + noise.to(device=scores.device, dtype=scores.dtype)


def _timed(processor, scores: torch.Tensor) -> float:
    if scores.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    processor(None, scores)
    if scores.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=152_064, help="vocabulary size (Qwen2's: 152,064)")
    ap.add_argument("--batch", type=int, default=16, help="rows decoded together")
    ap.add_argument("--steps", type=int, default=30, help="timed decoding steps per side")
    ap.add_argument("--device", default="cpu", help="where the logits live")
    args = ap.parse_args()

    device = torch.device(args.device)
    seeds = [1_000_003 * i for i in range(args.batch)]
    scores = torch.randn(args.batch, args.vocab, device=device)
    old, new = CpuGeneratorNoise(seeds), GumbelNoise(seeds)
    for _ in range(3):  # warm-up: allocator, new's buffers and token words
        old(None, scores), new(None, scores)
    t_old, t_new = [], []
    for _ in range(args.steps):
        t_old.append(_timed(old, scores))
        t_new.append(_timed(new, scores))
    m_old, m_new = statistics.median(t_old), statistics.median(t_new)
    copied_mb = args.batch * args.vocab * 4 / 1e6

    print(f"noise per decoding step: vocabulary {args.vocab:,}, batch {args.batch}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"old (CPU generators + copy): median {m_old * 1e3:.1f} ms, min {min(t_old) * 1e3:.1f} ms over {args.steps} steps")
    print(f"new (on-device hash):        median {m_new * 1e3:.1f} ms, min {min(t_new) * 1e3:.1f} ms over {args.steps} steps")
    print(f"ratio old / new: {m_old / m_new:.2f}x (medians), {min(t_old) / min(t_new):.2f}x (minima)")
    if device.type == "cpu":
        print(f"not measured here: on a GPU the old path also copies {copied_mb:.1f} MB host-to-device per step; the new copies none")


if __name__ == "__main__":
    main()
