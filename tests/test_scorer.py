"""The gRPC scorer service on real servers (127.0.0.1, port 0) with the packaged MiniLM: stub
freshness, health, reflection, metrics, every RPC and error path, deadlines, micro-batching, retries,
the drain on shutdown, the `sicog serve scorer` process, and equality with the in-process path."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

os.environ["HF_HUB_OFFLINE"] = "1"  # the default embedder must load with no model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sicog.curate.consistency import best_in_groups, consistency_scores  # noqa: E402
from sicog.errors import UserError  # noqa: E402
from sicog.prompts import format_cod, format_cot  # noqa: E402
from sicog.records import read_jsonl
from sicog.scorer.batcher import DeadlineExpired, MicroBatcher  # noqa: E402
from sicog.scorer.client import ScorerClient, ScorerError  # noqa: E402
from sicog.scorer.core import Limits  # noqa: E402
from sicog.scorer.server import SERVICE, ScorerServer, ServerOptions  # noqa: E402
from sicog.scorer.v1 import scorer_pb2, scorer_pb2_grpc  # noqa: E402
from sicog.steps import StepIO  # noqa: E402
from sicog.steps.score import score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_request_texts=64, max_group_texts=8, max_text_chars=2000)
OK, INVALID, EXHAUSTED = scorer_pb2.CODE_OK, scorer_pb2.CODE_INVALID_ARGUMENT, scorer_pb2.CODE_RESOURCE_EXHAUSTED
CAPTIONS = [
    "A large red circle sits on the left and a small blue square on the right.",
    "A big red circle on the left, a little blue square to its right.",
    "Three green triangles in a row on a black background.",
    "A yellow border frames a red circle and a blue square.",
    "A small blue square on the right of a large red circle.",
]


def _options(port: int = 0) -> ServerOptions:
    return ServerOptions(host="127.0.0.1", port=port, metrics_port=0, limits=LIMITS, max_message_bytes=2**20)


@pytest.fixture(scope="module")
def minilm():
    from sicog.curate.embedder import Embedder

    return Embedder()


@pytest.fixture(scope="module")
def server(minilm):
    srv = ScorerServer(_options()).start()
    srv.load(lambda: minilm)
    yield srv
    srv.shutdown(0)


@pytest.fixture(scope="module")
def address(server):
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def stub(address):
    with grpc.insecure_channel(address) as channel:
        yield scorer_pb2_grpc.ScorerStub(channel)


@pytest.fixture(scope="module")
def client(address):
    with ScorerClient(address, retries=0) as c:
        yield c


def _health(address: str, service: str = SERVICE) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# --- contract -------------------------------------------------------------------------------------


def test_committed_stubs_match_the_proto(tmp_path):
    from grpc_tools import protoc

    proto = "sicog/scorer/v1/scorer.proto"  # the command in src/sicog/scorer/v1/__init__.py
    args = ["protoc", f"-I{ROOT / 'proto'}"]
    assert protoc.main(args + [f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", str(ROOT / "proto" / proto)]) == 0
    for name in ("scorer_pb2.py", "scorer_pb2_grpc.py", "scorer_pb2.pyi"):
        fresh = (tmp_path / "sicog/scorer/v1" / name).read_bytes()
        assert fresh == (ROOT / "src/sicog/scorer/v1" / name).read_bytes(), f"{name} is stale: regenerate the stubs (see src/sicog/scorer/v1)"


def test_client_imports_without_torch():
    code = "import sys; import sicog.scorer.client; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --- a serving server -----------------------------------------------------------------------------


def test_health_reflection_and_info(server, address, client):
    assert _health(address) == health_pb2.HealthCheckResponse.SERVING
    assert _health(address, "") == health_pb2.HealthCheckResponse.SERVING
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(db.get_services())
        methods = descriptor_pool.DescriptorPool(db).FindServiceByName(SERVICE).methods
        assert [m.name for m in methods] == ["Embed", "ScoreGroups", "ScoreGroupsStream", "Info"]
    info = client.info()
    assert (info.model_id, info.dimension, info.max_seq_length_tokens) == ("all-MiniLM-L6-v2", 384, 256)
    assert (info.max_request_texts, info.max_group_texts, info.max_text_chars, info.max_message_bytes) == (64, 8, 2000, 2**20)
    assert info.version


def test_embed_equals_in_process_and_embeds_repeats_once(server, stub, client, minilm):
    texts = CAPTIONS + [CAPTIONS[0], CAPTIONS[2]]
    embedded = server.metrics.registry.get_sample_value("sicog_scorer_texts_embedded_total")
    response = stub.Embed(scorer_pb2.EmbedRequest(texts=texts), timeout=30)
    assert server.metrics.registry.get_sample_value("sicog_scorer_texts_embedded_total") - embedded == len(CAPTIONS)
    assert (response.model_id, response.dimension, response.distinct_texts, len(response.embeddings)) == ("all-MiniLM-L6-v2", 384, 5, 7)
    assert response.inference_time_ns > 0
    vectors = np.array([e.values for e in response.embeddings], dtype=np.float32)
    np.testing.assert_allclose(vectors, minilm.encode(texts), atol=1e-5)
    assert (vectors[5] == vectors[0]).all()
    np.testing.assert_allclose(client.encode(texts), vectors, atol=1e-6)  # the client splits, dedupes and scatters
    assert client.encode([]).shape == (0, 384)
    assert len(stub.Embed(scorer_pb2.EmbedRequest(), timeout=5).embeddings) == 0


def test_score_groups_equal_the_in_process_math(client, minilm):
    groups = [("g0", CAPTIONS[:3]), ("g1", CAPTIONS[1:5]), ("g2", [CAPTIONS[0], CAPTIONS[0]]), ("g3", [CAPTIONS[4], CAPTIONS[2]])]
    response = client.score_groups(groups, threshold=0.6)
    flat = [t for _, texts in groups for t in texts]
    sizes = [len(texts) for _, texts in groups]
    expected = consistency_scores(minilm.encode(flat), sizes)
    best = best_in_groups(expected, sizes)
    assert [r.id for r in response.results] == ["g0", "g1", "g2", "g3"] and response.failed_groups == 0
    assert response.distinct_texts == 5  # texts shared by groups are embedded once
    for r, values, b in zip(response.results, np.split(expected, np.cumsum(sizes)[:-1]), best):
        assert r.status.code == OK and r.best_index == b
        np.testing.assert_allclose(r.scores, values, atol=1e-5)
        assert r.best_score == pytest.approx(values[b], abs=1e-5) and r.kept == (r.best_score >= 0.6)
    assert not client.score_groups(groups[:1]).results[0].HasField("kept")  # no threshold, no decision


def test_bad_groups_are_reported_by_id_and_never_fail_the_others(client, stub, server):
    groups = [
        ("good", CAPTIONS[:3]),
        ("one", ["a lone caption"]),
        ("blank", ["red", "  "]),
        ("long", ["red", "x" * 2001]),
        ("many", ["red"] * 9),
        ("good2", CAPTIONS[2:4]),
    ]
    response = client.score_groups(groups)
    by_id = {r.id: r for r in response.results}
    assert response.failed_groups == 4
    assert by_id["good"].status.code == OK and len(by_id["good"].scores) == 3 and len(by_id["good2"].scores) == 2
    for gid, code, words in [
        ("one", INVALID, "at least 2"),
        ("blank", INVALID, "text 1 is empty"),
        ("long", INVALID, "2001 characters"),
        ("many", EXHAUSTED, "max_group_texts=8"),
    ]:
        assert by_id[gid].status.code == code and f"group {gid!r}" in by_id[gid].status.message and words in by_id[gid].status.message
        assert len(by_id[gid].scores) == 0
    alone = client.score_groups([("good", CAPTIONS[:3])])
    np.testing.assert_allclose(by_id["good"].scores, alone.results[0].scores, atol=1e-6)

    # PARTIAL_FAILURE_FAIL_CALL: the first bad group fails the call, with its code and id.
    with pytest.raises(ScorerError) as info:
        client.score_groups(groups, fail_call=True)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "group 'one'" in str(info.value)
    with pytest.raises(ScorerError) as info:
        client.score_groups([("good", CAPTIONS[:3]), ("many", ["red"] * 9)], fail_call=True)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "group 'many'" in str(info.value)
    assert _health(f"127.0.0.1:{server.port}") == health_pb2.HealthCheckResponse.SERVING  # still serving


def test_whole_request_errors(stub, client):
    cases = [
        (scorer_pb2.EmbedRequest(texts=["red"] * 65), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_request_texts=64"),
        (scorer_pb2.EmbedRequest(texts=["red", ""]), grpc.StatusCode.INVALID_ARGUMENT, "text 1 is empty"),
        (scorer_pb2.EmbedRequest(texts=["y" * 2001]), grpc.StatusCode.INVALID_ARGUMENT, "text 0 has 2001 characters"),
        (scorer_pb2.EmbedRequest(texts=["z" * (2**20 + 10)]), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),  # over the message limit
    ]
    for request, code, words in cases:
        got, details = _code(lambda: stub.Embed(request, timeout=10))
        assert got == code and words in details, details
    groups = scorer_pb2.ScoreGroupsRequest(groups=[scorer_pb2.Group(id=f"g{i}", texts=["a", "b", "c", "d", "e"]) for i in range(13)])
    got, details = _code(lambda: stub.ScoreGroups(groups, timeout=10))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "65 texts" in details
    assert client.encode(["still serving"]).shape == (1, 384)


def test_stream_answers_each_batch_in_order(client, stub):
    batches = [[("a", CAPTIONS[:3])], [("b", CAPTIONS[2:5]), ("bad", ["only one"])], [("c", CAPTIONS[:2])]]
    responses = list(client.score_groups_stream(batches, threshold=0.5))
    assert [[r.id for r in resp.results] for resp in responses] == [["a"], ["b", "bad"], ["c"]]
    assert responses[1].failed_groups == 1 and "group 'bad'" in responses[1].results[1].status.message
    unary = client.score_groups([("a", CAPTIONS[:3]), ("b", CAPTIONS[2:5]), ("c", CAPTIONS[:2])], threshold=0.5)
    for streamed, alone in zip([responses[0].results[0], responses[1].results[0], responses[2].results[0]], unary.results):
        np.testing.assert_allclose(streamed.scores, alone.scores, atol=1e-6)
        assert (streamed.best_index, streamed.kept) == (alone.best_index, alone.kept)
    indices = [
        m.batch_index for m in stub.ScoreGroupsStream(iter([scorer_pb2.ScoreGroupsStreamRequest(batch=scorer_pb2.ScoreGroupsRequest())] * 3), timeout=10)
    ]
    assert indices == [0, 1, 2]
    # A whole-batch error ends the stream with its status, naming the batch.
    too_big = [("g", ["a", "b"])] * 33
    with pytest.raises(ScorerError) as info:
        list(client.score_groups_stream([batches[0], too_big]))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "batch 1" in str(info.value)


def test_metrics_endpoint(server, client):
    client.encode(["metrics please"])
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    for name in (
        'sicog_scorer_requests_total{code="OK",method="Embed"}',
        "sicog_scorer_request_latency_seconds_bucket",
        "sicog_scorer_batch_size_texts_bucket",
        "sicog_scorer_texts_embedded_total",
        "sicog_scorer_texts_received_total",
        'sicog_scorer_requests_total{code="INVALID_ARGUMENT",method="Embed"}',
    ):
        assert name in body, name


# --- the curation step through the service --------------------------------------------------------


def _candidates(path: Path) -> None:
    cod = lambda last: format_cod(["Shapes.", "Sizes.", "Places.", "Border.", last])  # noqa: E731
    cot = lambda answer: format_cot(["Look.", "A circle.", f"The circle is {answer}.", answer])  # noqa: E731
    rows = []
    for n, texts in enumerate([CAPTIONS[:3], CAPTIONS[2:], CAPTIONS[1:4]]):
        rows += [
            {
                "id": f"img{n}",
                "task": "caption",
                "format": "cod" if i < 2 else "dd",
                "index": i,
                "seed": i,
                "prompt": "Describe.",
                "image": "a.png",
                "text": cod(t) if i < 2 else t,
                "model": "m",
            }
            for i, t in enumerate(texts)
        ]
    answers = [["red", "red", "Red."], ["the circle on the left is large and red", "a large red circle is on the left side", "blue"]]
    for n, texts in enumerate(answers):
        rows += [
            {
                "id": f"q{n}",
                "task": "vqa",
                "format": "cot" if i < 2 else "da",
                "index": i,
                "seed": i,
                "prompt": "Colour?",
                "image": "a.png",
                "text": cot(t) if i < 2 else t,
                "model": "m",
            }
            for i, t in enumerate(texts)
        ]
    rows += [
        {"id": "t0", "task": "text", "format": "text", "index": i, "seed": i, "prompt": "Say.", "text": t, "model": "m"}
        for i, t in enumerate(["yes", "yes", "no"])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_score_step_through_the_service_equals_in_process(tmp_path, address):
    src = tmp_path / "candidates.jsonl"
    _candidates(src)
    config = {
        "curate": {
            "caption": {"similarity": "embedding", "threshold": 0.5},
            "vqa": {"similarity": "hybrid", "threshold": 0.5},
            "text": {"similarity": "exact", "threshold": -1.0},
        }
    }
    local = score(config, StepIO("score", str(tmp_path / "local"), {"candidates": [str(src)]}))
    remote = score(config, StepIO("score", str(tmp_path / "remote"), {"candidates": [str(src)]}), scorer=address)
    assert local == remote
    read = lambda d: {r["id"]: r for r in read_jsonl((tmp_path / d / "scored.jsonl"))}  # noqa: E731
    a, b = read("local"), read("remote")
    assert set(a) == set(b) == {"img0", "img1", "img2", "q0", "q1", "t0"}
    assert {a[i]["similarity"] for i in ("q0", "q1")} == {"exact", "embedding"}  # hybrid used both
    for iid in a:
        assert (a[iid]["best"], a[iid]["kept"], a[iid]["similarity"]) == (b[iid]["best"], b[iid]["kept"], b[iid]["similarity"])
        np.testing.assert_allclose(a[iid]["scores"], b[iid]["scores"], atol=1e-5)
        assert abs(a[iid]["score"] - b[iid]["score"]) <= 1e-5

    # The config field and the CLI option reach the same path; a different model is refused.
    from typer.testing import CliRunner

    from sicog.cli import app

    result = CliRunner().invoke(
        app, ["score", "--in", str(src), "--out", str(tmp_path / "cli.jsonl"), "--scorer", address, "--set", "curate.caption.threshold=0.5"]
    )
    assert result.exit_code == 0, result.output
    assert {r["id"] for r in read_jsonl((tmp_path / "cli.jsonl"))} == {"img0", "img1", "img2", "q0", "q1", "t0"}
    with pytest.raises(UserError, match="serves 'all-MiniLM-L6-v2', but curate.embedder is 'other'"):
        score({"curate": {"embedder": "other", "scorer": address}}, StepIO("score", str(tmp_path / "other"), {"candidates": [str(src)]}))


# --- batching, deadlines, loading, retries, draining ----------------------------------------------


def test_batcher_drops_expired_and_cancelled_requests_unembedded():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.eye(8, dtype=np.float32)[: len(texts)]

    batcher = MicroBatcher(encode, max_seq_length=128, max_wait_s=0.05)
    expired = batcher.submit(["late"], deadline=time.monotonic() - 1)
    live = batcher.submit(["b", "a"], deadline=time.monotonic() + 30)
    with pytest.raises(DeadlineExpired):
        expired.result(timeout=5)
    assert (live.result(timeout=5).vectors == np.eye(8)[:2]).all()
    assert calls == [["b", "a"]]
    batcher.close()


class Gated:
    """The real embedder behind a gate the test opens: makes 'in flight' and 'queued' deterministic."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()
        self.model_id, self.dimension, self.max_seq_length = inner.model_id, inner.dimension, inner.max_seq_length

    def encode(self, texts):
        self.calls.append(list(texts))
        self.entered.set()
        assert self.gate.wait(30)
        return self.inner.encode(texts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["result"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 (handed to the test)
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_lifecycle_loading_retries_batching_deadlines_and_drain(minilm):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    gated, loaded = Gated(minilm), threading.Event()
    # 1. A client asks before the server exists: it retries UNAVAILABLE with backoff.
    early, early_out = _in_thread(ScorerClient(address, retries=40, backoff_s=0.05, max_backoff_s=0.5).encode, ["early bird"])
    time.sleep(0.3)
    server = ScorerServer(_options(port=port)).start()
    # 2. While the model loads: NOT_SERVING, and Scorer calls are UNAVAILABLE (nothing done).
    loader, _ = _in_thread(server.load, lambda: loaded.wait(30) and gated)
    assert _health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with grpc.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        code, details = _code(lambda: stub.Info(scorer_pb2.InfoRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE and "loading" in details
        loaded.set()
        loader.join(30)
        early.join(30)
        assert "error" not in early_out and early_out["result"].shape == (1, 384)
        assert _health(address) == health_pb2.HealthCheckResponse.SERVING

        # 3. Concurrent requests queued behind a running batch go through the model together, each text once.
        gated.gate.clear()
        gated.entered.clear()
        gated.calls.clear()
        first, _ = _in_thread(lambda: stub.Embed(scorer_pb2.EmbedRequest(texts=["first"]), timeout=30))
        assert gated.entered.wait(10)
        texts = [["red", "blue"], ["red"], ["green", "green"], ["blue", "grey"]]
        waiting = [_in_thread(lambda t=t: stub.Embed(scorer_pb2.EmbedRequest(texts=t), timeout=30)) for t in texts]
        # 4. A request whose deadline passes in the queue is answered DEADLINE_EXCEEDED and never embedded.
        code, _ = _code(lambda: stub.Embed(scorer_pb2.EmbedRequest(texts=["too late"]), timeout=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        gated.gate.set()
        first.join(30)
        answers = [(thread.join(30), out) for thread, out in waiting]
        assert stub.Embed(scorer_pb2.EmbedRequest(texts=["after"]), timeout=30).distinct_texts == 1
        assert len(gated.calls) == 3 and gated.calls[0] == ["first"] and gated.calls[2] == ["after"]
        assert sorted(gated.calls[1]) == ["blue", "green", "grey", "red"]  # one batch, each text once, "too late" dropped
        for t, (_, out) in zip(texts, answers):
            np.testing.assert_allclose([e.values for e in out["result"].embeddings], minilm.encode(t), atol=1e-5)
        assert server.metrics.registry.get_sample_value("sicog_scorer_requests_total", {"method": "Embed", "code": "DEADLINE_EXCEEDED"}) == 1

        # 5. Shutdown: NOT_SERVING at once, new calls refused, the call in flight still gets its answer.
        gated.gate.clear()
        gated.entered.clear()
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        in_flight, in_flight_out = _in_thread(lambda: stub.Embed(scorer_pb2.EmbedRequest(texts=["in flight"]), timeout=30))
        assert gated.entered.wait(10)
        stopper, stopped = _in_thread(server.shutdown, 20)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        time.sleep(0.2)
        code, _ = _code(lambda: stub.Info(scorer_pb2.InfoRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
        gated.gate.set()
        in_flight.join(30)
        stopper.join(30)
        assert len(in_flight_out["result"].embeddings) == 1
        stats = stopped["result"]
        assert stats["cut_off"] == 0 and stats["accepted"] == stats["answered"] >= 8
        assert server.wait(0)


def test_serve_scorer_command_serves_and_drains_on_sigterm():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sicog.cli", "serve", "scorer", "--port", "0", "--host", "127.0.0.1", "--metrics-port", "0", "--grace-s", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        address = line.split("listening on ")[1].split()[0]
        with ScorerClient(address, retries=40, backoff_s=0.25, max_backoff_s=1.0) as c:
            assert c.encode(["hello"]).shape == (1, 384)  # retried until the model loaded
        assert _health(address) == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "draining" in out and "cut off 0" in out, out
