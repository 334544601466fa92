"""The scorer server: gRPC with health, reflection and Prometheus metrics; graceful drain on SIGTERM.

Lifecycle, as a Kubernetes probe sees it through the standard health service (`grpc.health.v1`):
  start()    port bound, NOT_SERVING (Scorer RPCs answer UNAVAILABLE: "loading")
  load()     the model loads, then SERVING
  shutdown() NOT_SERVING at once, new calls refused (UNAVAILABLE), calls in flight finish within
             the grace period; then gRPC, the batcher and the metrics endpoint stop.
Loading after binding is deliberate: the pod is reachable (and says why it is not ready) during
the seconds a model takes to load.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from sicog.console import say
from sicog.errors import UserError
from sicog.scorer.core import Limits, ScorerCore
from sicog.scorer.metrics import ScorerMetrics
from sicog.scorer.servicer import ScorerServicer
from sicog.scorer.v1 import scorer_pb2, scorer_pb2_grpc

SERVICE = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name  # "sicog.scorer.v1.Scorer"


@dataclass
class ServerOptions:
    host: str = "0.0.0.0"
    port: int = 50051  # 0: any free port (see ScorerServer.port)
    metrics_port: int | None = 8000  # Prometheus /metrics; 0: any free port; None: none
    threads: int = 16  # RPC worker threads; each waiting call holds one, the model runs in the batcher thread
    grace_s: float = 30.0  # how long in-flight calls may run after SIGTERM (keep under the pod's terminationGracePeriodSeconds)
    linger_s: float = 0.5  # after the last in-flight call, keep refusing new ones (UNAVAILABLE) this long before gRPC stops
    max_message_bytes: int = 64 * 2**20  # larger requests fail with RESOURCE_EXHAUSTED
    max_wait_s: float = 0.003  # how long the batcher waits for more requests once it has one
    limits: Limits = field(default_factory=Limits)


class ScorerServer:
    def __init__(self, options: ServerOptions | None = None) -> None:
        self.options = options = options or ServerOptions()
        self.metrics = ScorerMetrics()
        self.servicer = ScorerServicer(self.metrics, options.max_message_bytes)
        self.health = health.HealthServicer()
        size = options.max_message_bytes
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="scorer-rpc"),
            # so_reuseport 0: a second server on a taken port must fail, not silently share it.
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size), ("grpc.so_reuseport", 0)],
        )
        scorer_pb2_grpc.add_ScorerServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._http = None
        self._lock = threading.Lock()
        self._shutting_down = False
        self._stopped = threading.Event()

    def start(self) -> "ScorerServer":
        """Bind and serve health/reflection (NOT_SERVING); `port` and `metrics_port` are then known."""
        o = self.options
        try:
            self.port = self._server.add_insecure_port(f"{o.host}:{o.port}")
        except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
            raise UserError(f"cannot bind {o.host}:{o.port} ({exc})") from None
        self._server.start()
        if o.metrics_port is not None:
            try:
                self._http, _ = start_http_server(o.metrics_port, addr=o.host, registry=self.metrics.registry)
            except OSError as exc:
                self._server.stop(0)
                raise UserError(f"cannot serve metrics on {o.host}:{o.metrics_port} ({exc})") from None
            self.metrics_port = self._http.server_port
        return self

    def load(self, make_embedder: Callable[[], object]) -> None:
        """Build the embedder (an `Embedder`; slow), then report SERVING."""
        embedder = make_embedder()
        core = ScorerCore(embedder, self.options.limits, self.options.max_wait_s, self.metrics.on_batch)
        with self._lock:
            if self._shutting_down:  # SIGTERM came while loading
                core.close()
                return
            self.servicer.core = core
            for name in ("", SERVICE):
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def shutdown(self, grace_s: float | None = None) -> dict:
        """Drain and stop (idempotent); returns the accepted/answered/cut_off call counts."""
        with self._lock:
            first = not self._shutting_down
            self._shutting_down = True
        if first:
            self.health.enter_graceful_shutdown()  # NOT_SERVING for every service, for good
            self.servicer.draining = True
            # Drain in two steps. While accepted calls finish, the server still runs and refuses new
            # calls itself with UNAVAILABLE (clean and retryable); only then does gRPC stop. Stopping
            # at once would make gRPC cancel calls that were in transit (CANCELLED, not retried).
            end = time.monotonic() + (self.options.grace_s if grace_s is None else grace_s)
            while self.metrics.unfinished() and time.monotonic() < end:
                time.sleep(0.01)
            # A caller that has just got its answer may already be sending its next call: refuse those
            # cleanly for a moment, so that gRPC's stop finds no call in transit to cancel.
            time.sleep(max(0.0, min(self.options.linger_s, end - time.monotonic())))
            self._server.stop(max(0.0, end - time.monotonic())).wait()
            if self.servicer.core is not None:
                self.servicer.core.close()
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            self._stopped.set()
        self._stopped.wait()
        return self.stats()

    def stats(self) -> dict:
        m = self.metrics
        return {"accepted": m.accepted, "answered": m.answered, "cut_off": m.cut_off}

    def wait(self, timeout: float | None = None) -> bool:
        """True once shut down."""
        return self._stopped.wait(timeout)


def run(options: ServerOptions, model: str, device: str, batch_size: int, torch_threads: int = 0, trust_remote_code: bool = False) -> dict:
    """The `sicog serve scorer` process: serve until SIGTERM/SIGINT, drain, return the call counts.

    Prints one `listening` line with the bound ports (port 0 asks the OS) before loading the model.
    `torch_threads` > 0 caps torch's CPU threads (0: torch's default, one per core), leaving cores
    for the RPC threads on a small CPU node.
    """
    import torch  # only the server process needs it

    from sicog.curate.embedder import Embedder

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)

    server = ScorerServer(options).start()
    say("scorer", f"listening on {options.host}:{server.port} (metrics port {server.metrics_port}); loading {model}")

    def on_signal(signum, frame):  # drain off the main thread: the handler must return quickly
        say("scorer", f"signal {signum}, draining (grace {options.grace_s:g} s)")
        threading.Thread(target=server.shutdown, name="scorer-drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.load(lambda: Embedder(model, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code))
    except (OSError, ValueError, RuntimeError) as exc:
        server.shutdown(0)
        raise UserError(f"cannot load embedder {model!r}: {exc}") from None
    if not server.wait(0):
        say("scorer", f"serving {model} on {device}")
    while not server.wait(0.5):
        pass
    stats = server.stats()
    say("scorer", f"stopped; calls accepted {stats['accepted']}, answered {stats['answered']}, cut off {stats['cut_off']}")
    sys.stdout.flush()
    return stats
