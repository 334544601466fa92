"""Counter-based Gumbel noise: exact integer hash, batch independence, uniformity, Gumbel-max sampling."""

from __future__ import annotations

import math
import random

import pytest
import torch

from sicog.generate.noise import MASK32, GumbelNoise, gumbel, mix32, mix32_int, uniforms

_RNG = random.Random(0)
SEEDS = [_RNG.getrandbits(63) for _ in range(64)] + [0, 1, 2**63 - 1, 2**64 - 1]
assert len(set(SEEDS)) == len(SEEDS)


def _reference_uniform(seed: int, step: int, token: int) -> float:
    """The noise module's docstring, written out on Python ints (unbounded, so no overflow question)."""

    def mix(x: int) -> int:  # lowbias32: [16 21f0aaad 15 d35a2d97 15]
        x ^= x >> 16
        x = (x * 0x21F0AAAD) & MASK32
        x ^= x >> 15
        x = (x * 0xD35A2D97) & MASK32
        return x ^ (x >> 15)

    lo, hi = seed & MASK32, seed >> 32
    k1 = mix(mix(mix(lo ^ 0x9E3779B9) ^ hi) ^ mix(step ^ 0xC2B2AE35))
    k2 = mix(mix(mix(hi ^ 0x85EBCA6B) ^ lo) ^ mix(step ^ 0x27D4EB2F))
    word = mix(mix(mix(token) ^ k1) ^ k2)
    return ((word >> 8) | 1) / 2**24


def test_mix32_on_tensors_is_the_exact_32_bit_hash():
    rng = random.Random(1)
    xs = [0, 1, 2**31 - 1, 2**31, MASK32 - 1, MASK32] + [rng.getrandbits(32) for _ in range(20000)]
    assert mix32(torch.tensor(xs)).tolist() == [mix32_int(x) for x in xs]
    assert len(set(mix32_int(x) for x in range(1 << 16))) == 1 << 16  # a bijection: no collisions


def test_uniforms_follow_the_reference_bit_for_bit():
    rng = random.Random(2)
    vocab = 152_064  # Qwen2's
    for seed in SEEDS[:6] + SEEDS[-4:]:
        step = rng.randrange(4096)
        u = uniforms([seed], step, vocab)[0]
        for token in [0, vocab - 1] + [rng.randrange(vocab) for _ in range(20)]:
            assert u[token].item() == _reference_uniform(seed, step, token)


def test_noise_is_deterministic_and_does_not_depend_on_the_batch():
    vocab, steps = 1000, 5
    alone = {}
    for s in SEEDS[:8]:
        proc = GumbelNoise([s])
        alone[s] = [proc(None, torch.zeros(1, vocab))[0] for _ in range(steps)]
    rng = random.Random(3)
    for size in (2, 3, 8):
        batch = rng.sample(SEEDS[:8], size)
        proc = GumbelNoise(batch)
        for step in range(steps):
            noised = proc(None, torch.zeros(size, vocab))
            for row, s in enumerate(batch):
                assert torch.equal(noised[row], alone[s][step])
    # a repeated seed in one batch gets the same noise twice; a fresh processor starts again at step 0
    twice = GumbelNoise([SEEDS[0], SEEDS[0]])(None, torch.zeros(2, vocab))
    assert torch.equal(twice[0], twice[1]) and torch.equal(twice[0], alone[SEEDS[0]][0])


def test_noise_differs_across_steps_seeds_and_tokens():
    vocab = 152_064
    u = uniforms(SEEDS[:2], 0, vocab)
    later = uniforms(SEEDS[:2], 1, vocab)
    near = uniforms([SEEDS[0] + 1, SEEDS[0] ^ (1 << 40)], 0, vocab)  # seeds one bit apart, low and high word
    # u takes 2**23 values: two independent rows agree on vocab / 2**23 = 0.02 tokens on average
    for a, b in [(u[0], u[1]), (u[0], later[0]), (u[1], later[1]), (u[0], near[0]), (u[0], near[1])]:
        assert (a == b).sum().item() <= 2
    for row in u:  # within a row: the 32-bit words are distinct; the 23-bit uniforms nearly so
        assert row.unique().numel() > 0.99 * vocab


def _chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


def test_uniforms_are_uniform_and_independent():
    # 64 seeds x 4 steps x 4,096 tokens = 1,048,576 values
    u = torch.stack([uniforms(SEEDS[:64], step, 4096) for step in range(4)])  # (step, seed, token)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.002  # sd of the mean: 0.29 / sqrt(n) = 0.0003
    assert abs(u.var().item() - 1 / 12) < 5e-4  # sd of the variance: 7.3e-5
    # 64 equal buckets: chi-square with 63 degrees of freedom (mean 63, sd 11.2; P(> 120) ~ 1e-5)
    assert _chi_square(torch.bincount((u * 64).long().flatten(), minlength=64).float()) < 120
    # neighbours along each axis (next step, next seed, next token) are uncorrelated and jointly uniform
    pairs = [(u[1:], u[:-1]), (u[:, 1:], u[:, :-1]), (u[..., 1:], u[..., :-1])]
    for a, b in pairs:
        a, b = a.flatten().double(), b.flatten().double()
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / math.sqrt(a.numel())
        cells = torch.bincount((a * 8).long() * 8 + (b * 8).long(), minlength=64).float()  # 8 x 8 grid
        assert _chi_square(cells) < 120
    # a few fixed tokens, seen across seeds and steps, are uniform too (no token is biased)
    for token in (0, 1, 4095):
        column = u[..., token].flatten()
        assert _chi_square(torch.bincount((column * 4).long(), minlength=4).float()) < 25  # df 3


def test_gumbel_variates_have_the_gumbel_moments():
    g = gumbel(SEEDS[:64], 7, 16384)  # 1,048,576 values
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772157) < 0.01  # Euler's gamma; sd of the mean 0.0013
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03
    assert -3 < g.min() and g.max() < 17  # the truncation of u to (2**-24, 1 - 2**-24)


def test_gumbel_max_samples_the_softmax_along_one_seeds_steps():
    """Per-seed sampling over many steps (the existing test checks one step over many seeds)."""
    logits = torch.tensor([math.log(1), math.log(2), math.log(3), math.log(4), -math.inf])
    proc, n = GumbelNoise([SEEDS[5]]), 4000
    picks = torch.stack([proc(None, logits[None].clone())[0].argmax() for _ in range(n)])
    freqs = torch.bincount(picks, minlength=5).float() / n
    assert torch.allclose(freqs[:4], torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03)
    assert freqs[4] == 0


def test_processor_keeps_minus_inf_and_the_scores_dtype_and_checks_rows():
    scores = torch.tensor([[0.0, -math.inf, 1.0]], dtype=torch.bfloat16)
    out = GumbelNoise([1])(None, scores)
    assert out.dtype == torch.bfloat16 and torch.isneginf(out[0, 1]) and torch.isfinite(out[0, [0, 2]]).all()
    with pytest.raises(ValueError, match="2 rows of scores for 1 seeds"):
        GumbelNoise([1])(None, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="outside"):
        GumbelNoise([-1])(None, torch.zeros(1, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_noise_matches_the_cpu():
    seeds, vocab = SEEDS[:16], 152_064
    assert torch.equal(uniforms(seeds, 3, vocab, "cuda").cpu(), uniforms(seeds, 3, vocab))
    cpu, gpu = gumbel(seeds, 3, vocab), gumbel(seeds, 3, vocab, "cuda").cpu()
    assert torch.allclose(cpu, gpu, rtol=0, atol=1e-5)  # float32 logs: within an ulp or two
    assert (cpu.argmax(-1) == gpu.argmax(-1)).all()
