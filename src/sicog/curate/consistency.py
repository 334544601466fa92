"""Self-consistency scores of SICOG step 3, as pure functions over arrays (paper Sec. 3.3).

Layout: the candidates of one instance ("group") are consecutive rows; `sizes[g]` says how many
rows group g has, in order. Every function is vectorised across groups: the only Python loops run
over the distinct group sizes (usually one: 3 candidates) and over cache-sized blocks of groups.

Embedding score: candidate i of a group with k candidates scores the mean cosine similarity to the
*other* k - 1 candidates (the paper's "against all others"; the reference code also counts i
itself, which adds 1/k and shifts every threshold). With S the sum of the group's rows,

    sum_{j != i} e_i . e_j = e_i . S - e_i . e_i

so the score costs O(d) per candidate instead of O(k d). We subtract the computed e_i . e_i rather
than the constant 1: the identity then holds for any vectors, so the tiny norm errors of a float32
normalisation (|e|^2 = 1 +- 1e-7) cannot leak into the scores. Rows whose squared norm is off by
more than `NORM_TOLERANCE` are refused, since their scores would be dot products, not cosines.

Groups of equal size are a free (G, k, d) reshape, so S is a sum over the middle axis; groups of
mixed sizes are handled one size class at a time by gathering rows. (np.add.reduceat over axis 0
computes the same S but runs one inner loop per group and column: ~15x slower here.) The row dot
products use np.vecdot (numpy >= 2), which beats einsum for short rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np

NORM_TOLERANCE = 1e-3  # |e.e - 1| above this: the rows were not L2-normalised
TIE_ATOL = 1e-6  # scores this close to a group's best tie (float32 rounding is ~1e-7)
_BLOCK_GROUPS = 1024  # groups per block: ~4.5 MB of float32 at k=3, d=384, so the three passes hit cache


def _check_sizes(sizes: np.ndarray | Sequence[int], n_rows: int) -> np.ndarray:
    """Sizes as an int64 vector, refusing groups of fewer than 2 and a total that is not n_rows."""
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or (sizes.size and not np.issubdtype(sizes.dtype, np.integer)):
        raise ValueError(f"sizes must be a 1-D integer array, got shape {sizes.shape} of {sizes.dtype}")
    sizes = sizes.astype(np.int64, copy=False)
    small = np.flatnonzero(sizes < 2)
    if small.size:
        g = int(small[0])
        raise ValueError(f"self-consistency needs at least 2 candidates per group; group {g} has {int(sizes[g])} ({small.size} such group(s))")
    if int(sizes.sum()) != n_rows:
        raise ValueError(f"sizes add up to {int(sizes.sum())} rows, but there are {n_rows}")
    return sizes


def _size_classes(sizes: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(k, group indices, (G_k, k) row indices) for each distinct group size k."""
    starts = np.cumsum(sizes) - sizes
    for k in np.unique(sizes):
        groups = np.flatnonzero(sizes == k)
        yield int(k), groups, starts[groups][:, None] + np.arange(k)


def _class_scores(emb: np.ndarray, rows: np.ndarray | None, g_total: int, k: int) -> np.ndarray:
    """Scores of g_total groups of equal size k -> (g_total, k) float64.

    `rows` (g_total, k) holds each group's row indices; None means the groups are emb's rows in
    order, which a reshape views without copying. Blocks of groups are gathered one at a time, so
    memory stays at one block beyond the input whatever N is.
    """
    e3 = emb.reshape(g_total, k, emb.shape[1]) if rows is None else None
    out = np.empty((g_total, k), dtype=np.float64)
    for a in range(0, g_total, _BLOCK_GROUPS):
        x = e3[a : a + _BLOCK_GROUPS] if rows is None else emb[rows[a : a + _BLOCK_GROUPS]]
        group_sum = np.einsum("gkd->gd", x)  # S of each group (einsum beats .sum(axis=1) here)
        self_dot = np.vecdot(x, x)  # e_i . e_i, (B, k)
        bad = np.abs(self_dot - 1.0) > NORM_TOLERANCE
        if bad.any():
            g, i = (int(v[0]) for v in np.nonzero(bad))
            raise ValueError(f"embeddings must be L2-normalised: candidate {i} of a group of {k} has squared norm {float(self_dot[g, i]):.6f}")
        out[a : a + _BLOCK_GROUPS] = (np.vecdot(x, group_sum[:, None, :]) - self_dot) / (k - 1)
    return out


def consistency_scores(emb: np.ndarray, sizes: np.ndarray | Sequence[int]) -> np.ndarray:
    """Mean cosine similarity of each row to the other rows of its group -> (N,) float64.

    `emb` is (N, d) with L2-normalised rows; `sizes` is (G,) with every size >= 2 (ValueError
    otherwise: with one candidate there is nothing to be consistent with).
    """
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise ValueError(f"emb must be a 2-D (N, d) array, got shape {emb.shape}")
    sizes = _check_sizes(sizes, emb.shape[0])
    if sizes.size == 0:
        return np.empty(0, dtype=np.float64)
    if (sizes == sizes[0]).all():  # the common case: a free reshape, no gather
        return _class_scores(emb, None, sizes.size, int(sizes[0])).reshape(-1)
    out = np.empty(emb.shape[0], dtype=np.float64)
    for k, groups, rows in _size_classes(sizes):
        out[rows] = _class_scores(emb, rows, groups.size, k)
    return out


def best_in_groups(scores: np.ndarray | Sequence[float], sizes: np.ndarray | Sequence[int]) -> np.ndarray:
    """Local index (0..k-1) of the best row of each group -> (G,) int64.

    Tie rule: scores within TIE_ATOL of the group's maximum tie, and the lowest local index (the
    lowest candidate index, since rows are in index order) wins. With k = 2 both candidates always
    tie (each scores cos(e_0, e_1)), so candidate 0 wins: callers that care should sample k >= 3.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    sizes = _check_sizes(sizes, scores.shape[0])
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if sizes.size and (sizes == sizes[0]).all():  # the common case: a free reshape
        return _first_near_max(scores.reshape(sizes.size, int(sizes[0])))
    best = np.empty(sizes.size, dtype=np.int64)
    for _, groups, rows in _size_classes(sizes):
        best[groups] = _first_near_max(scores[rows])
    return best


def _first_near_max(s: np.ndarray) -> np.ndarray:
    """Per row of (G, k) scores, the first column within TIE_ATOL of the row's maximum."""
    # Column by column: numpy reduces a short axis of many rows slowly, a few long columns fast.
    near_max = s >= functools.reduce(np.maximum, s.T)[:, None] - TIE_ATOL
    return np.argmax(near_max, axis=1)  # argmax of booleans: the first True


def exact_scores(keys: Sequence[str], sizes: np.ndarray | Sequence[int]) -> np.ndarray:
    """Share of the *other* rows of the group whose key equals this row's key -> (N,) float64.

    Keys are compared verbatim: normalise them first (the curation step uses
    `sicog.prompts.normalize_answer`). Linear time up to one sort: each key gets an
    integer code, (group, code) pairs are counted with np.unique, and a row's score is
    (count of its pair - 1) / (k - 1).
    """
    keys = list(keys)
    sizes = _check_sizes(sizes, len(keys))
    if not keys:
        return np.empty(0, dtype=np.float64)
    codes_of: dict[str, int] = {}
    codes = np.fromiter((codes_of.setdefault(key, len(codes_of)) for key in keys), dtype=np.int64, count=len(keys))
    group = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    _, inverse, counts = np.unique(group * len(codes_of) + codes, return_inverse=True, return_counts=True)
    return (counts[inverse] - 1) / (np.repeat(sizes, sizes) - 1)
