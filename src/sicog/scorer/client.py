"""Client of the scorer service. Imports grpc, numpy and the generated stubs only (no torch), so
sampler shards and the curation step can call a shared scorer without the model stack.

`ScorerClient.encode` has the `Embedder.encode` contract (texts -> L2-normalised float32 rows), so
`sicog.curate.select.score_instances` takes a client wherever it takes an embedder: the scores are
then computed by the very same code from the very same vectors. UNAVAILABLE (server loading,
draining or not up yet; a replica going away) is retried with exponential backoff and jitter, and
so is CANCELLED: this client never cancels its own calls, so a CANCELLED comes from a server that
stopped before it accepted the call. Every RPC of the service is idempotent, so a retry is always
safe. Other errors are not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence

import grpc
import numpy as np

from sicog import retry
from sicog.errors import UserError
from sicog.scorer.v1 import scorer_pb2, scorer_pb2_grpc

# Codes a call is retried on (see the module docstring).
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in RETRYABLE


GroupsArg = Mapping[str, Sequence[str]] | Sequence[tuple[str, Sequence[str]]]


class ScorerError(UserError):
    """A call the service refused or could not answer; `code` is the grpc.StatusCode.

    A UserError so that the CLI reports it as one line (bad input, or no scorer at the address)."""

    def __init__(self, address: str, exc: grpc.RpcError) -> None:
        self.code = exc.code()
        super().__init__(f"scorer {address}: {self.code.name}: {exc.details()}")


def _groups_request(groups: GroupsArg, threshold: float | None, fail_call: bool) -> scorer_pb2.ScoreGroupsRequest:
    items = groups.items() if isinstance(groups, Mapping) else groups
    return scorer_pb2.ScoreGroupsRequest(
        groups=[scorer_pb2.Group(id=str(gid), texts=list(texts)) for gid, texts in items],
        threshold=threshold,
        partial_failure=scorer_pb2.PARTIAL_FAILURE_FAIL_CALL if fail_call else scorer_pb2.PARTIAL_FAILURE_REPORT,
    )


class ScorerClient:
    def __init__(
        self,
        address: str,
        timeout_s: float = 300.0,
        retries: int = 6,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
        max_message_bytes: int = 64 * 2**20,
        request_texts: int = 256,
    ) -> None:
        """`address`: HOST:PORT. `timeout_s` is each call's deadline; `retries` extra attempts on
        UNAVAILABLE or CANCELLED, the n-th after ~backoff_s * 2**n seconds (at most max_backoff_s).
        `request_texts`: most texts per Embed request of `encode` (small requests keep each call
        well inside its deadline on a CPU server and let the server interleave other clients)."""
        self.address = address
        self.request_texts = request_texts
        self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s = timeout_s, retries, backoff_s, max_backoff_s
        # The chart's scorer Service is headless: the DNS name resolves to every ready pod, and
        # round_robin spreads calls over them (gRPC's default, pick_first, would use one pod only).
        target = address if "://" in address else f"dns:///{address}"
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.lb_policy_name", "round_robin"),
            ],
        )
        self._stub = scorer_pb2_grpc.ScorerStub(self._channel)
        self._info: scorer_pb2.InfoResponse | None = None

    def _call(self, method: str, request, timeout_s: float | None = None):
        """One RPC under the project's retry policy (sicog.retry): RETRYABLE codes are retried."""
        try:
            return retry.call(
                lambda: getattr(self._stub, method)(request, timeout=timeout_s or self.timeout_s),
                _retryable,
                attempts=self.retries + 1,
                first_s=self.backoff_s,
                max_s=self.max_backoff_s,
                what=f"scorer {self.address} {method}",
                level=logging.INFO,
            )
        except grpc.RpcError as exc:
            raise ScorerError(self.address, exc) from None

    def info(self) -> scorer_pb2.InfoResponse:
        """The served model and limits (fetched once)."""
        if self._info is None:
            self._info = self._call("Info", scorer_pb2.InfoRequest())
        return self._info

    @property
    def model_id(self) -> str:
        return self.info().model_id

    @property
    def dimension(self) -> int:
        return self.info().dimension

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32 normalised rows in the order of `texts`, as `Embedder.encode`.

        Each distinct text is sent once; long lists go in requests of at most `request_texts` (and
        the server's max_request_texts) texts and about half the message size limit.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not a single string")
        row_of: dict[str, int] = {}
        for text in texts:
            row_of.setdefault(text, len(row_of))
        info = self.info()
        out = np.empty((len(row_of), info.dimension), dtype=np.float32)
        distinct, start = list(row_of), 0
        per_request = min(self.request_texts, info.max_request_texts)
        while start < len(distinct):
            end, size = start, 0
            while end < len(distinct) and end - start < per_request and (end == start or size < info.max_message_bytes // 2):
                size += len(distinct[end]) + 8
                end += 1
            response = self._call("Embed", scorer_pb2.EmbedRequest(texts=distinct[start:end]))
            out[start:end] = [e.values for e in response.embeddings]
            start = end
        return out[[row_of[t] for t in texts]] if len(texts) else out

    def score_groups(self, groups: GroupsArg, threshold: float | None = None, fail_call: bool = False) -> scorer_pb2.ScoreGroupsResponse:
        """Scores of (id, texts) groups (or a mapping id -> texts); see GroupResult in the proto.

        Bad groups come back with their own status unless `fail_call`, which makes the first bad
        group fail the call (ScorerError, message naming the group)."""
        return self._call("ScoreGroups", _groups_request(groups, threshold, fail_call))

    def score_groups_stream(
        self, batches: Iterable[GroupsArg], threshold: float | None = None, fail_call: bool = False
    ) -> Iterator[scorer_pb2.ScoreGroupsResponse]:
        """One response per batch, in order, over one stream (not retried: a stream is not replayable)."""
        requests = (scorer_pb2.ScoreGroupsStreamRequest(batch=_groups_request(b, threshold, fail_call)) for b in batches)
        try:
            for response in self._stub.ScoreGroupsStream(requests, timeout=self.timeout_s):
                yield response.batch
        except grpc.RpcError as exc:
            raise ScorerError(self.address, exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "ScorerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
