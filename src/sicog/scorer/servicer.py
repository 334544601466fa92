"""The gRPC servicer: protobuf in, `ScorerCore` call, protobuf out; status codes and metrics.

Every RPC goes through `_rpc`, the one place that maps outcomes to status codes: UNAVAILABLE while
the model loads or the server drains (nothing was done; retry), the code a `RequestError` names
(bad input: INVALID_ARGUMENT / RESOURCE_EXHAUSTED), DEADLINE_EXCEEDED when the deadline passed
before the texts were embedded, and INTERNAL only for what is truly the server's fault.
"""

from __future__ import annotations

import contextlib
import logging
import time

import grpc

import sicog
from sicog.scorer.batcher import DeadlineExpired
from sicog.scorer.core import RequestError, ScorerCore
from sicog.scorer.metrics import ScorerMetrics
from sicog.scorer.v1 import scorer_pb2, scorer_pb2_grpc

log = logging.getLogger(__name__)
_NO_DEADLINE_S = 1e8  # grpc reports "no deadline" as a far-future one


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, metrics: ScorerMetrics, max_message_bytes: int) -> None:
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.core: ScorerCore | None = None  # set once the model is loaded
        self.draining = False

    @contextlib.contextmanager
    def _rpc(self, method: str, context):
        """Yields (core, deadline, on_future) and turns what the body raises into a status."""
        start, code, message = time.perf_counter(), grpc.StatusCode.OK, ""
        self.metrics.in_flight.inc()
        try:
            core = self.core
            if core is None or self.draining:
                code = grpc.StatusCode.UNAVAILABLE
                context.abort(code, "scorer is draining" if self.draining else "scorer is loading its model")
            self.metrics.count("accepted")
            remaining = context.time_remaining()
            deadline = None if remaining is None or remaining > _NO_DEADLINE_S else time.monotonic() + remaining
            try:
                yield core, deadline, lambda future: context.add_callback(future.cancel)
            except RequestError as exc:
                code, message = grpc.StatusCode[exc.code], str(exc)
            except DeadlineExpired as exc:
                code, message = grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
            except grpc.RpcError:  # the client cancelled while the server read its stream
                code = grpc.StatusCode.CANCELLED
                self.metrics.count("cut_off")
                raise
            except Exception as exc:
                log.exception("%s failed", method)
                code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
            except BaseException:  # a stream closed by its client
                code = grpc.StatusCode.CANCELLED
                self.metrics.count("cut_off")
                raise
            # A client's own deadline ending the call is an answer (DEADLINE_EXCEEDED), not a loss.
            delivered = context.is_active() or code is grpc.StatusCode.DEADLINE_EXCEEDED
            self.metrics.count("answered" if delivered else "cut_off")
            if code is not grpc.StatusCode.OK:
                context.abort(code, message)
        finally:
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.perf_counter() - start)
            self.metrics.in_flight.dec()

    def Embed(self, request, context):
        with self._rpc("Embed", context) as (core, deadline, on_future):
            self.metrics.texts_received.inc(len(request.texts))
            vectors, done, distinct = core.embed(request.texts, deadline, on_future)
            return scorer_pb2.EmbedResponse(
                embeddings=[scorer_pb2.Embedding(values=row) for row in vectors.tolist()],
                model_id=core.embedder.model_id,
                dimension=core.embedder.dimension,
                distinct_texts=distinct,
                queue_time_ns=done.queue_time_ns,
                inference_time_ns=done.inference_time_ns,
            )

    def _score(self, core: ScorerCore, request, deadline, on_future) -> scorer_pb2.ScoreGroupsResponse:
        self.metrics.texts_received.inc(sum(len(g.texts) for g in request.groups))
        results, done, distinct = core.score_groups(
            [(g.id, g.texts) for g in request.groups],
            request.threshold if request.HasField("threshold") else None,
            request.partial_failure == scorer_pb2.PARTIAL_FAILURE_FAIL_CALL,
            deadline,
            on_future,
        )
        response = scorer_pb2.ScoreGroupsResponse(
            model_id=core.embedder.model_id,
            distinct_texts=distinct,
            queue_time_ns=done.queue_time_ns if done else 0,
            inference_time_ns=done.inference_time_ns if done else 0,
        )
        for r in results:
            out = response.results.add(id=r.id, status=scorer_pb2.GroupStatus(code=scorer_pb2.Code.Value(f"CODE_{r.code}"), message=r.message))
            if r.scores is not None:
                out.scores.extend(r.scores.tolist())
                out.best_index, out.best_score = r.best_index, r.best_score
            if r.kept is not None:
                out.kept = r.kept
            response.failed_groups += r.code != "OK"
        return response

    def ScoreGroups(self, request, context):
        with self._rpc("ScoreGroups", context) as (core, deadline, on_future):
            return self._score(core, request, deadline, on_future)

    def ScoreGroupsStream(self, request_iterator, context):
        """Batches are answered one at a time, in order; a whole-batch error ends the stream."""
        with self._rpc("ScoreGroupsStream", context) as (core, deadline, on_future):
            for index, request in enumerate(request_iterator):
                try:
                    response = self._score(core, request.batch, deadline, on_future)
                except RequestError as exc:
                    raise RequestError(exc.code, f"batch {index}: {exc}") from None
                yield scorer_pb2.ScoreGroupsStreamResponse(batch_index=index, batch=response)

    def Info(self, request, context):
        with self._rpc("Info", context) as (core, _, _):
            limits, embedder = core.limits, core.embedder
            return scorer_pb2.InfoResponse(
                model_id=embedder.model_id,
                dimension=embedder.dimension,
                max_request_texts=limits.max_request_texts,
                max_group_texts=limits.max_group_texts,
                max_text_chars=limits.max_text_chars,
                max_seq_length_tokens=embedder.max_seq_length,
                max_batch_tokens=limits.max_batch_tokens,
                max_message_bytes=self.max_message_bytes,
                version=sicog.__version__,
            )
