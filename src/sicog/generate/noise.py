"""Counter-based Gumbel noise for per-request sampling: a pure function of (seed, step, token id).

Why a hash and not a `torch.Generator` per row: a generator is a stream, so row i's noise must be
drawn row by row (on the CPU, where the streams are the same on every platform) and copied to the
device: 152,064 floats per row and decoding step at Qwen2's vocabulary. A hash of (request seed,
decoding step, token id) needs no state and no copy: it is computed where the logits are, for the
whole batch in one pass, and a row's value cannot depend on the other rows.

The hash works on 32-bit words held in int64 tensors, with every intermediate kept below 2**63, so
it is exact on any device and needs no wrapping overflow (torch leaves signed overflow undefined):

- `mix32` is lowbias32 (C. Wellons' hash-prospector, constants 0x21f0aaad / 0xd35a2d97 found by
  TheIronBorn): xorshift-multiply-xorshift-multiply-xorshift, a bijection of 32-bit words. The second
  constant c is >= 2**31, so x * c mod 2**32 is taken as x * (c - 2**31) + ((x & 1) << 31), masked.
- a request seed (below 2**64; `candidate_seed` gives 63 bits) is split into 32-bit words lo, hi,
  and the step is absorbed into two lanes, giving a 64-bit row key per (seed, step):
  k1 = mix32(mix32(mix32(lo ^ 0x9e3779b9) ^ hi) ^ mix32(step ^ 0xc2b2ae35)),
  k2 = mix32(mix32(mix32(hi ^ 0x85ebca6b) ^ lo) ^ mix32(step ^ 0x27d4eb2f));
- a token's word is mix32(mix32(mix32(token) ^ k1) ^ k2): for a fixed row the map is a bijection of
  token ids, so two tokens of a row never share a 32-bit word.

The word's top 23 bits k give u = (2k + 1) / 2**24, exact in float32 and strictly inside (0, 1), and
the Gumbel variate is -log(-log(u)) in float32 (range about [-2.8, 16.6]; the truncated tails have
probability 6e-8 each). The integer part, hence u, is bit-identical on every device; the two logs
are the device's float32 log, whose last bit may differ between CPU and GPU (as the model's own
logits do). Cost per step: about 35 elementwise passes over batch x vocabulary int64/float32 buffers
allocated once per batch; nothing is copied from the host and nothing waits for the device.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

MASK32 = 0xFFFFFFFF
_C1 = 0x21F0AAAD  # lowbias32 multipliers (hash-prospector); _C1 < 2**31
_C2_LOW = 0xD35A2D97 - 2**31  # _C2 = _C2_LOW + 2**31; x * _C2_LOW < 2**63 for x < 2**32
_LANE1, _LANE2 = 0x9E3779B9, 0x85EBCA6B  # lane tags (golden ratio, murmur3 constant): lanes start apart
_STEP1, _STEP2 = 0xC2B2AE35, 0x27D4EB2F  # step tags, so that step s and seed word s do not cancel


def mix32(x: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """lowbias32 of an int64 tensor of 32-bit words, in place (returns `x`). `tmp`: a scratch
    tensor like `x` (saves an allocation per operation on vocabulary-sized batches)."""
    tmp = torch.empty_like(x) if tmp is None else tmp
    torch.bitwise_right_shift(x, 16, out=tmp)
    x.bitwise_xor_(tmp)
    x.mul_(_C1).bitwise_and_(MASK32)  # < 2**62 before the mask
    torch.bitwise_right_shift(x, 15, out=tmp)
    x.bitwise_xor_(tmp)
    torch.bitwise_and(x, 1, out=tmp).bitwise_left_shift_(31)  # x * 2**31 mod 2**32
    x.mul_(_C2_LOW).add_(tmp).bitwise_and_(MASK32)  # < 2**63 - 2**32 before the mask
    torch.bitwise_right_shift(x, 15, out=tmp)
    return x.bitwise_xor_(tmp)


def mix32_int(x: int) -> int:
    """mix32 on one Python int: the reference the tensor version is tested against."""
    x ^= x >> 16
    x = (x * _C1) & MASK32
    x ^= x >> 15
    x = (x * (_C2_LOW + 2**31)) & MASK32
    return x ^ (x >> 15)


def seed_words(seeds: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, 2) int64: each seed's two lanes after absorbing its low and high 32-bit words.
    Seeds are non-negative and below 2**64 (`candidate_seed` gives 63 bits)."""
    rows = []
    for s in seeds:
        s = int(s)
        if not 0 <= s < 2**64:
            raise ValueError(f"seed {s} is outside [0, 2**64)")
        lo, hi = s & MASK32, s >> 32
        rows.append([mix32_int(mix32_int(lo ^ _LANE1) ^ hi), mix32_int(mix32_int(hi ^ _LANE2) ^ lo)])
    return torch.tensor(rows, dtype=torch.int64, device=device).reshape(len(rows), 2)


def row_keys(words: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k1, k2), each (batch, 1): the 64-bit key of every row at decoding step `step` (on the device
    of `words`; `step` enters as a Python scalar, so nothing is copied)."""
    if not 0 <= step <= MASK32:
        raise ValueError(f"step {step} is outside [0, 2**32)")
    keys = words.clone()
    keys[:, 0].bitwise_xor_(mix32_int(step ^ _STEP1))
    keys[:, 1].bitwise_xor_(mix32_int(step ^ _STEP2))
    mix32(keys)
    return keys[:, :1], keys[:, 1:]


def token_words(vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(vocab,) int64: mix32 of every token id."""
    if not 0 < vocab <= MASK32:
        raise ValueError(f"vocabulary size {vocab} is outside [1, 2**32)")
    return mix32(torch.arange(vocab, dtype=torch.int64, device=device))


def _words(tokens: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    torch.bitwise_xor(tokens, k1, out=out)
    mix32(out, tmp)
    out.bitwise_xor_(k2)
    return mix32(out, tmp)


def _to_uniform(words: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """u = (2k + 1) / 2**24 with k the top 23 bits: words.shr(8) | 1 is the odd integer 2k + 1 < 2**24,
    exact in float32, and the power-of-two scale is exact too. Overwrites `words`."""
    words.bitwise_right_shift_(8).bitwise_or_(1)
    return out.copy_(words).mul_(2.0**-24)


def uniforms(seeds: list[int], step: int, vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, vocab) float32 in (0, 1): the uniform of every (seed, step, token id)."""
    k1, k2 = row_keys(seed_words(seeds, device), step)
    words = torch.empty(len(seeds), vocab, dtype=torch.int64, device=device)
    _words(token_words(vocab, device), k1, k2, words, torch.empty_like(words))
    return _to_uniform(words, torch.empty(words.shape, dtype=torch.float32, device=device))


def gumbel(seeds: list[int], step: int, vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, vocab) float32 Gumbel(0, 1) variates: -log(-log(u)) of `uniforms`."""
    return uniforms(seeds, step, vocab, device).log_().neg_().log_().neg_()


class GumbelNoise(LogitsProcessor):
    """Adds Gumbel(0, 1) noise to each row from that row's seed (Gumbel-max sampling).

    Step 0 is the first call; each call is the next decoding step, which is the same for every row
    of a `generate` batch (rows start together, left-padded). The seed words, token words and work
    buffers go to the scores' device at the first call (a (batch, 2) copy, once); later steps copy
    nothing. The noise is finite, so -inf logits (dropped by top-p) stay -inf.
    """

    def __init__(self, seeds: list[int]):
        self.seeds = [int(s) for s in seeds]
        self.step = 0
        self._state: tuple | None = None

    def _buffers(self, shape: torch.Size, device: torch.device) -> tuple:
        if self._state is None or self._state[0] != (shape, device):
            words = torch.empty(shape, dtype=torch.int64, device=device)
            self._state = (
                (shape, device),
                seed_words(self.seeds, device),
                token_words(shape[-1], device),
                words,
                torch.empty_like(words),
                torch.empty(shape, dtype=torch.float32, device=device),
            )
        return self._state[1:]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"{scores.shape[0]} rows of scores for {len(self.seeds)} seeds")
        seeds, tokens, words, tmp, noise = self._buffers(scores.shape, scores.device)
        k1, k2 = row_keys(seeds, self.step)
        self.step += 1
        _words(tokens, k1, k2, words, tmp)
        noise = _to_uniform(words, noise).log_().neg_().log_().neg_()
        return scores + noise.to(scores.dtype)
