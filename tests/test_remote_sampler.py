"""The remote sampler against a real OpenAI-compatible server on loopback (`transformers serve` on a
tiny LLaVA, started here), with every request body checked against TGI's published `ChatRequest`
schema and every response against `ChatCompletion`; retries against a real flaky proxy in front of
the server; the CoD teacher path against the same server."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import httpx2
import numpy as np
import pytest
from openapi_schema_validator import OAS30Validator
from PIL import Image

from sicog.annotate.cod import annotate_cod
from sicog.config import SampleConfig
from sicog.generate.plan import plan_requests
from sicog.generate.remote import RemoteSampler
from sicog.generate.sample import sample_candidates
from sicog.generate.seeds import candidate_seed
from sicog.generate.serving import TransformersServer, sampling_copy
from sicog.prompts import CAPTION_COD, CAPTION_DD
from sicog.records import read_jsonl
from tiny import IMAGE_SIZE, tiny_sampler_model

SCHEMAS = Path(__file__).parent / "schemas" / "tgi-openapi.json"


# --- TGI's schema ---------------------------------------------------------------------------------


def _validator(name: str):
    """An OpenAPI 3.0 validator for one of TGI's schemas; its $refs resolve within the document.

    TGI's `MessageChunk` puts a `discriminator` without `mapping` on inline `oneOf` schemas; OpenAPI
    then resolves the type value as a schema *name* (`#/components/schemas/text`), which does not
    exist. The discriminator is only a hint; `oneOf` over the `type` enums already decides, so it is
    left out here (the vendored file stays unchanged)."""
    spec = json.loads(SCHEMAS.read_text())
    spec["components"]["schemas"]["MessageChunk"].pop("discriminator")
    return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


CHAT_REQUEST = _validator("ChatRequest")
CHAT_COMPLETION = _validator("ChatCompletion")


def _errors(validator, obj) -> list[str]:
    return sorted(e.message for e in validator.iter_errors(obj))


def test_schema_fixture_rejects_what_tgi_rejects():
    """The vendored schema is live: a body TGI would refuse fails it."""
    good = {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}, {"type": "text", "text": "hi"}]}],
        "seed": 3,
        "max_tokens": 8,
    }
    assert _errors(CHAT_REQUEST, good) == []
    assert _errors(CHAT_REQUEST, {"messages": [{"role": "user", "content": [{"type": "image", "url": "x"}]}]})
    assert _errors(CHAT_REQUEST, {**good, "seed": -1})
    assert _errors(CHAT_REQUEST, {"seed": 1})


# --- the server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`transformers serve` on a tiny random LLaVA (continuous batching asked for; see serving.py),
    and an image folder: (server, image_root)."""
    tmp = tmp_path_factory.mktemp("serve")
    texts = [CAPTION_DD, CAPTION_COD, "What colour is the circle?", "A red circle above a blue square.", "Step 1: x"] * 10
    model_dir = tiny_sampler_model(tmp / "tiny", texts)
    root = tmp / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "corrupt.png").write_bytes(b"not a png")
    with TransformersServer(sampling_copy(model_dir, tmp / "served")) as server:
        yield server, root


class Recorder:
    """Every request body and response the client exchanges, via httpx event hooks on the HTTP client
    under openai.AsyncOpenAI (the traffic still goes to the real server), plus the peak in flight."""

    def __init__(self):
        self.requests: list[dict] = []
        self.responses: list[tuple[int, dict | None]] = []
        self.in_flight = self.peak = 0

    def factory(self, timeout_s: float):
        client = httpx2.AsyncClient(timeout=timeout_s)

        async def on_request(request):
            if request.url.path.endswith("/chat/completions"):
                self.requests.append(json.loads(request.content))
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)

        async def on_response(response):
            if response.request.url.path.endswith("/chat/completions"):
                self.in_flight -= 1
                await response.aread()
                body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
                self.responses.append((response.status_code, body))

        client.event_hooks["request"].append(on_request)
        client.event_hooks["response"].append(on_response)
        return client


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr("sicog.generate.remote._http_client", rec.factory)
    yield rec


def _records():
    return [{"id": f"img-{i}", "image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour is the circle?"}]} for i in range(3)]


def _check_traffic(recorder: Recorder):
    """Requests must be valid TGI ChatRequests; responses valid ChatCompletions except for
    `system_fingerprint`, which TGI always sends and `transformers serve` omits."""
    assert recorder.requests
    for body in recorder.requests:
        assert _errors(CHAT_REQUEST, body) == [], body
    for status, body in recorder.responses:
        if status == 200:
            assert _errors(CHAT_COMPLETION, body) == ["'system_fingerprint' is a required property"]
            assert _errors(CHAT_COMPLETION, {**body, "system_fingerprint": "3.3.6-sha-db931fc"}) == []


def test_candidates_from_a_real_server_with_images_and_seeds(served, recorder):
    server, root = served
    reqs = plan_requests(_records(), "caption", {"cod": 2, "dd": 1}, cycle_seed=7)
    reqs += plan_requests([{"id": "t", "conversations": [{"from": "human", "value": "Name a colour."}]}], "text", 3, cycle_seed=7)
    bad = {**reqs[0], "id": "bad", "image": "corrupt.png"}
    sampler = RemoteSampler(server.base_url, root, served_model=server.model, concurrency=4, max_new_tokens=12)
    chunks = [reqs[:5], reqs[5:9], reqs[9:] + [bad]]
    got = dict(sampler.generate_chunks(chunks))
    assert sorted(got) == [0, 1, 2]
    for k, chunk in enumerate(chunks):
        assert sorted((r["id"], r["index"]) for r in got[k]) == sorted((r["id"], r["index"]) for r in chunk)
    rows = {(r["id"], r["index"]): r for rows in got.values() for r in rows}
    assert rows[("bad", 0)]["text"] is None and "corrupt image" in rows[("bad", 0)]["error"]
    good = [r for r in rows.values() if r["id"] != "bad"]
    assert all(isinstance(r["text"], str) and "error" not in r and r["model"] == server.model for r in good)
    assert all(r["seed"] == candidate_seed(7, r["id"], r["index"]) for r in good)
    # one request per candidate, each with its own seed; none for the corrupt image
    assert len(recorder.requests) == len(reqs) == sampler.attempts
    assert sorted(b["seed"] for b in recorder.requests) == sorted(r["seed"] for r in reqs)
    assert all(b["temperature"] == 0.7 and b["top_p"] == 0.95 and b["max_tokens"] == 12 and "n" not in b for b in recorder.requests)
    images = [b for b in recorder.requests if isinstance(b["messages"][0]["content"], list)]
    assert len(images) == 9
    assert all(b["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,") for b in images)
    assert 1 < recorder.peak <= 4  # bounded concurrency, and more than one in flight
    assert sampler.output_tokens > 0
    _check_traffic(recorder)


def test_sample_candidates_through_the_remote_backend(served, recorder, tmp_path):
    server, root = served
    cfg = SampleConfig(engine="openai", endpoint=server.base_url, served_model=server.model, max_new_tokens=8, shards=2, chunk_size=1, concurrency=3)
    out = tmp_path / "caption.jsonl"
    stats = sample_candidates(_records(), "caption", None, out, cfg, cycle_seed=1, image_root=root)
    rows = list(read_jsonl(out))
    assert stats["candidates"] == len(rows) == 9 and stats["failures"] == 0 and stats["chunks_sampled"] == 3
    assert [(r["id"], r["index"]) for r in rows] == [(f"img-{i}", k) for i in range(3) for k in range(3)]
    again = sample_candidates(_records(), "caption", None, out, cfg, cycle_seed=1, image_root=root)
    assert again["chunks_sampled"] == 0 and len(recorder.requests) == 9  # the re-run resumed everything
    _check_traffic(recorder)


class FlakyProxy:
    """A real HTTP proxy in front of the server: answers `fail` requests with `status` (and a
    Retry-After of 0), then forwards; counts what it saw."""

    def __init__(self, upstream: str, fail: int, status: int = 503):
        self.upstream, self.fail, self.status, self.seen = upstream, fail, status, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.seen += 1
                if proxy.seen <= proxy.fail:
                    self.send_response(proxy.status)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                up = httpx2.post(proxy.upstream + self.path, content=body, headers={"content-type": "application/json"}, timeout=60)
                self.send_response(up.status_code)
                self.send_header("Content-Type", up.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(up.content)))
                self.end_headers()
                self.wfile.write(up.content)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_on_5xx_and_429_then_succeeds(served):
    server, root = served
    reqs = plan_requests(_records()[:1], "caption", {"dd": 1}, cycle_seed=0)
    for status in (503, 429):
        proxy = FlakyProxy(server.url, fail=2, status=status)
        try:
            sampler = RemoteSampler(proxy.base_url, root, served_model=server.model, max_new_tokens=4, max_attempts=3)
            [row] = list(sampler.generate(reqs))
        finally:
            proxy.close()
        assert row["text"] is not None and "error" not in row
        assert proxy.seen == 3 and sampler.attempts == 3


def test_failures_are_rows_with_reasons_never_empty_candidates(served):
    server, root = served
    reqs = plan_requests(_records()[:2], "caption", {"dd": 1}, cycle_seed=0)
    proxy = FlakyProxy(server.url, fail=10**6, status=500)
    try:
        sampler = RemoteSampler(proxy.base_url, root, served_model=server.model, max_new_tokens=4, max_attempts=2)
        rows = list(sampler.generate(reqs))
    finally:
        proxy.close()
    assert all(r["text"] is None and r["error"].startswith("after 2 attempt(s): HTTP 500") for r in rows)
    assert proxy.seen == 4
    # a 4xx is the request's fault: no retry (the server is pinned to its model; another name is a 400)
    wrong = RemoteSampler(server.base_url, root, served_model="some/other-model", max_new_tokens=4, max_attempts=3)
    [row] = list(wrong.generate(reqs[:1]))
    assert row["text"] is None and "HTTP 400" in row["error"] and wrong.attempts == 1
    # nothing listening: connection errors are retried, then reported
    closed = RemoteSampler("http://127.0.0.1:9/v1", root, max_new_tokens=4, max_attempts=2)
    [row] = list(closed.generate(reqs[:1]))
    assert row["text"] is None and "connection error" in row["error"] and closed.attempts == 2


def test_cod_teacher_retries_once_then_quarantines(served, recorder):
    """The random tiny model cannot write 5 CoD steps: every record is asked twice (fresh seed,
    temperature 0.2), then quarantined with both raw answers and the parse error."""
    server, root = served
    records = [
        {
            "id": f"cap-{i}",
            "image": f"{i}.png",
            "conversations": [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "A red circle above a blue square."}],
        }
        for i in range(2)
    ]
    teacher = RemoteSampler(server.base_url, root, served_model=server.model, concurrency=2)
    annotated, quarantine = annotate_cod(records, teacher, seed=0, max_new_tokens=16, temperature=0.2)
    assert annotated == []
    assert [q["id"] for q in quarantine] == ["cap-0", "cap-1"]
    assert all(q["reason"].startswith("after one retry: not 5 well-formed CoD steps") and len(q["raw"]) == 2 for q in quarantine)
    assert len(recorder.requests) == 4 and all(b["temperature"] == 0.2 and b["max_tokens"] == 16 for b in recorder.requests)
    assert len({b["seed"] for b in recorder.requests}) == 4
    prompt = recorder.requests[0]["messages"][0]["content"][1]["text"]
    assert "A red circle above a blue square." in prompt and "Step 5: Organize all observations" in prompt
    _check_traffic(recorder)


# --- client-side image resize and prompt groups ------------------------------------------------------


def test_images_are_resized_on_the_client_to_the_models_input_edge(tmp_path):
    """A photo much larger than the model's input travels at the model's input size (shorter side =
    edge, aspect kept, JPEG stays JPEG); a small image travels byte for byte as stored."""
    import base64
    import io

    from sicog.generate.remote import image_data_uri
    from sicog.generate.sample import model_image_edge

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    url = image_data_uri("photo.jpg", tmp_path, edge=32)
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        assert im.size == (43, 32) and im.format == "JPEG"
    assert len(url) < (tmp_path / "photo.jpg").stat().st_size / 20
    small = image_data_uri("small.png", tmp_path, edge=32)
    assert base64.b64decode(small.split(",", 1)[1]) == (tmp_path / "small.png").read_bytes()
    assert image_data_uri("photo.jpg", tmp_path, edge=0) == image_data_uri("photo.jpg", tmp_path)  # 0: as stored
    assert model_image_edge(None) == 0  # no model folder: nothing to size by (tests/test_serving.py reads real ones)


def test_candidates_that_share_a_prompt_are_grouped_only_for_engines_with_n():
    from sicog.generate.remote import prompt_groups

    reqs = plan_requests(_records()[:2], "caption", {"cod": 2, "dd": 1}, cycle_seed=3)
    groups = prompt_groups(reqs, share=True)
    assert [[(r["id"], r["format"], r["index"]) for r in g] for g in groups] == [
        [("img-0", "cod", 0), ("img-0", "cod", 1)],
        [("img-0", "dd", 2)],
        [("img-1", "cod", 0), ("img-1", "cod", 1)],
        [("img-1", "dd", 2)],
    ]
    assert [len(g) for g in prompt_groups(reqs, share=False)] == [1] * 6
    assert RemoteSampler("http://x/v1", ".", engine="vllm").share_prefill
    # SGLang copies one seed to all n choices: one request per candidate; TGI ignores n, transformers serve refuses it
    assert not any(RemoteSampler("http://x/v1", ".", engine=e).share_prefill for e in ("sglang", "tgi", "openai"))
    assert not RemoteSampler("http://x/v1", ".", engine="vllm", share_prefill=False).share_prefill
