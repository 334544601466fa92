"""Micro-batching: texts of concurrent requests go through the model together.

A transformer encoder is far more efficient on one batch of 64 texts than on eight batches of 8,
and the model can only run one batch at a time anyway. So request threads do not call the model:
they `submit` their distinct texts and wait on a future, while one batcher thread takes whatever is
queued (waiting at most `max_wait_s` for more once it has something), up to `max_batch_tokens`
estimated tokens, embeds the distinct texts of the whole batch in one `encode` call, and routes the
rows back. A request that is cancelled, or whose deadline passed while it queued, is dropped before
the model runs: its texts are never embedded.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

_STOP = object()


class DeadlineExpired(Exception):
    """The request's deadline passed before its texts reached the model."""


def estimate_tokens(text: str, max_seq_length: int) -> int:
    """Tokens the model will see, without running the tokenizer: WordPiece/BPE average ~4 English
    characters per token, plus [CLS]/[SEP], capped at the model's truncation length."""
    return min(max_seq_length, 2 + len(text) // 4)


@dataclass
class Embedded:
    """What a request gets back: its rows, and where its time went."""

    vectors: np.ndarray  # (len(texts), d) float32, in submit order
    queue_time_ns: int
    inference_time_ns: int


@dataclass
class _Item:
    texts: list[str]
    tokens: int
    deadline: float | None  # time.monotonic() seconds
    enqueued_ns: int = field(default_factory=time.monotonic_ns)
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """One thread that owns the model; `submit` from any thread."""

    def __init__(
        self,
        encode: Callable[[list[str]], np.ndarray],
        max_seq_length: int,
        max_batch_tokens: int = 65536,
        max_wait_s: float = 0.003,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        """`encode`: distinct texts -> (n, d) rows; `on_batch(texts, distinct)` is called per model batch (metrics)."""
        self._encode = encode
        self._max_seq_length = max_seq_length
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="scorer-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: Sequence[str], deadline: float | None = None) -> Future:
        """A future of `Embedded` for `texts` (distinct texts expected; order kept)."""
        texts = list(texts)
        tokens = sum(estimate_tokens(t, self._max_seq_length) for t in texts)
        item = _Item(texts, tokens, deadline)
        self._queue.put(item)
        return item.future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        carry = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch, tokens = [first], first.tokens
            until = time.monotonic() + self.max_wait_s
            while tokens < self.max_batch_tokens:
                try:
                    item = self._queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP or tokens + item.tokens > self.max_batch_tokens:
                    carry = item  # starts the next batch (a request larger than the budget runs alone)
                    break
                batch.append(item)
                tokens += item.tokens
            self._process(batch)

    def _process(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live = []
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                continue  # the caller went away
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExpired("deadline passed while queued; nothing was embedded"))
                continue
            live.append(item)
        if not live:
            return
        row_of: dict[str, int] = {}
        for item in live:
            for text in item.texts:
                row_of.setdefault(text, len(row_of))
        start = time.monotonic_ns()
        try:
            vectors = self._encode(list(row_of))
        except Exception as exc:  # a model failure fails this batch's requests, not the thread
            for item in live:
                item.future.set_exception(exc)
            return
        end = time.monotonic_ns()
        if self._on_batch is not None:
            self._on_batch(sum(len(item.texts) for item in live), len(row_of))
        for item in live:
            rows = vectors[[row_of[t] for t in item.texts]] if item.texts else vectors[:0]
            item.future.set_result(Embedded(rows, start - item.enqueued_ns, end - start))
