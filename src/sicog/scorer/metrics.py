"""Prometheus metrics of the scorer service, in a registry of its own (one per server, so tests can
run several servers in one process), plus the accepted/answered counts the drain report uses."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS_TEXTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ScorerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sicog_scorer_requests", "RPCs finished, by method and gRPC status code.", ["method", "code"], registry=r)
        self.latency = Histogram("sicog_scorer_request_latency_seconds", "RPC latency in the server.", ["method"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.in_flight = Gauge("sicog_scorer_in_flight_requests", "RPCs being handled.", registry=r)
        self.batch_texts = Histogram("sicog_scorer_batch_size_texts", "Texts per model micro-batch (before dedupe).", buckets=_BATCH_BUCKETS_TEXTS, registry=r)
        self.texts_received = Counter("sicog_scorer_texts_received", "Texts received in requests.", registry=r)
        self.texts_embedded = Counter("sicog_scorer_texts_embedded", "Distinct texts run through the model.", registry=r)
        self._lock = threading.Lock()
        self.accepted = 0  # calls that passed the readiness check and were worked on
        self.answered = 0  # of those, calls whose answer (a response or a chosen status) was delivered
        self.cut_off = 0  # of those, calls cancelled before their answer (e.g. by the end of the grace period)

    def on_batch(self, texts: int, distinct: int) -> None:
        self.batch_texts.observe(texts)
        self.texts_embedded.inc(distinct)

    def unfinished(self) -> int:
        """Accepted calls not yet answered or cut off."""
        with self._lock:
            return self.accepted - self.answered - self.cut_off

    def count(self, field: str) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)
