"""What the scorer service computes, without gRPC: request checks, shared embedding, group scores.

The math is not here: vectors come from `Embedder.encode` (through the micro-batcher) and scores
from `sicog.curate.consistency`, the functions the in-process curation step uses, so the service
and the in-process path cannot drift apart. This module only decides what a request may ask for
and lays the texts of many groups out as one embedding call.

Errors carry the name of a gRPC status code ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), which the
servicer passes on as is: bad input must never look like a server fault (INTERNAL).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from sicog.curate.consistency import best_in_groups, consistency_scores
from sicog.scorer.batcher import DeadlineExpired, Embedded, MicroBatcher


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; reported by Info so clients can split their work."""

    max_request_texts: int = 4096  # texts per request, all groups together
    max_group_texts: int = 256  # texts per group (SICOG samples 3; MBR-style uses may sample dozens)
    max_text_chars: int = 32768  # ~8k tokens: far beyond any embedder's truncation length
    # Estimated tokens gathered into one encode call. The model still runs batches of the embedder's
    # batch_size, so this bounds latency, not memory; a wide window lets sentence-transformers sort
    # more texts by length: 8 concurrent requests of 32 mixed-length captions measured 0.79-0.90x of
    # a sorted in-process encode with a 16k window, 0.95x with this one (benchmarks/scorer.py).
    max_batch_tokens: int = 65536


class RequestError(ValueError):
    """A request the server will not compute; `code` is a gRPC status code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class GroupScore:
    """One group's outcome: `code` "OK" with scores, or an error code and a message naming the id."""

    id: str
    code: str = "OK"
    message: str = ""
    scores: np.ndarray | None = None  # (k,) float64, request order
    best_index: int = 0
    best_score: float = 0.0
    kept: bool | None = None  # None: no threshold was given


def _text_problem(text: str, limits: Limits) -> str | None:
    if not text.strip():
        return "is empty"
    if len(text) > limits.max_text_chars:
        return f"has {len(text)} characters, more than max_text_chars={limits.max_text_chars}"
    return None


def _check_request_size(n_texts: int, limits: Limits) -> None:
    if n_texts > limits.max_request_texts:
        raise RequestError(
            "RESOURCE_EXHAUSTED",
            f"request has {n_texts} texts, more than max_request_texts={limits.max_request_texts}; split it",
        )


def group_problem(gid: str, texts: Sequence[str], limits: Limits) -> tuple[str, str] | None:
    """(code, message naming the group) for a group the server will not score, else None."""
    if len(texts) < 2:
        return "INVALID_ARGUMENT", f"group {gid!r}: {len(texts)} text(s); self-consistency needs at least 2"
    if len(texts) > limits.max_group_texts:
        return "RESOURCE_EXHAUSTED", f"group {gid!r}: {len(texts)} texts, more than max_group_texts={limits.max_group_texts}"
    for i, text in enumerate(texts):
        problem = _text_problem(text, limits)
        if problem:
            return "INVALID_ARGUMENT", f"group {gid!r}: text {i} {problem}"
    return None


class ScorerCore:
    """Embeds through one micro-batcher and scores groups with the curation step's functions."""

    def __init__(self, embedder, limits: Limits, max_wait_s: float = 0.003, on_batch: Callable[[int, int], None] | None = None) -> None:
        """`embedder`: an `Embedder` (encode, model_id, dimension, max_seq_length)."""
        self.embedder = embedder
        self.limits = limits
        self.batcher = MicroBatcher(embedder.encode, embedder.max_seq_length, limits.max_batch_tokens, max_wait_s, on_batch)

    def close(self) -> None:
        self.batcher.close()

    def _embed_distinct(self, texts: list[str], deadline: float | None, on_future: Callable[[Future], None] | None) -> tuple[Embedded, dict[str, int]]:
        """Rows for the distinct texts of `texts` and each text's row; waits at most until `deadline`."""
        row_of: dict[str, int] = {}
        for text in texts:
            row_of.setdefault(text, len(row_of))
        future = self.batcher.submit(list(row_of), deadline)
        if on_future is not None:
            on_future(future)
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            return future.result(timeout=timeout), row_of
        except FutureTimeout:
            future.cancel()  # still queued: the batcher skips it
            raise DeadlineExpired("deadline passed while embedding") from None

    def embed(self, texts: Sequence[str], deadline: float | None = None, on_future=None) -> tuple[np.ndarray, Embedded, int]:
        """((len(texts), d) float32 rows in request order, the batch's timings, distinct texts)."""
        texts = list(texts)
        _check_request_size(len(texts), self.limits)
        for i, text in enumerate(texts):
            problem = _text_problem(text, self.limits)
            if problem:
                raise RequestError("INVALID_ARGUMENT", f"text {i} {problem}")
        if not texts:
            return np.empty((0, self.embedder.dimension), dtype=np.float32), Embedded(np.empty((0, 0)), 0, 0), 0
        done, row_of = self._embed_distinct(texts, deadline, on_future)
        return done.vectors[[row_of[t] for t in texts]], done, len(row_of)

    def score_groups(
        self,
        groups: Sequence[tuple[str, Sequence[str]]],
        threshold: float | None = None,
        fail_call: bool = False,
        deadline: float | None = None,
        on_future=None,
    ) -> tuple[list[GroupScore], Embedded | None, int]:
        """(one GroupScore per group in order, timings or None if nothing was embedded, distinct texts).

        Bad groups get their own code and message; with `fail_call` the first one raises instead.
        All good groups share one embedding call, so texts repeated across groups are embedded once.
        """
        _check_request_size(sum(len(texts) for _, texts in groups), self.limits)
        results, good = [], []
        for gid, texts in groups:
            problem = group_problem(gid, texts, self.limits)
            if problem and fail_call:
                raise RequestError(*problem)
            results.append(GroupScore(gid, *problem) if problem else GroupScore(gid))
            if not problem:
                good.append((results[-1], list(texts)))
        if not good:
            return results, None, 0
        flat = [text for _, texts in good for text in texts]
        done, row_of = self._embed_distinct(flat, deadline, on_future)
        sizes = np.array([len(texts) for _, texts in good], dtype=np.int64)
        scores = consistency_scores(done.vectors[[row_of[t] for t in flat]], sizes)
        best = best_in_groups(scores, sizes)
        for (result, _), values, b in zip(good, np.split(scores, np.cumsum(sizes)[:-1]), best):
            result.scores, result.best_index, result.best_score = values, int(b), float(values[b])
            if threshold is not None:
                result.kept = result.best_score >= threshold
        return results, done, len(row_of)
