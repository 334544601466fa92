"""The seed promise on the served path: the remote sampler against the engine stand-in (tests/engine.py,
in front of a real `transformers serve` on a tiny LLaVA) in vLLM mode (`n` choices, choice k seeded
seed + k) and SGLang mode (launched with --enable-deterministic-inference; one request per candidate,
since SGLang copies one seed to all `n` choices). Two runs give identical candidates, the candidates of
one prompt differ, and each row's `seed` is the one the engine sampled it with."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

import engine as standin
from sicog.generate.plan import plan_requests
from sicog.generate.remote import RemoteSampler, engine_seeds
from sicog.generate.seeds import candidate_seed
from sicog.generate.serving import TransformersServer, sampling_copy
from sicog.prompts import CAPTION_COD, CAPTION_DD
from tiny import IMAGE_SIZE, tiny_sampler_model


def test_engine_seeds_are_consecutive_from_the_first_candidate():
    group = [{"seed": 10}, {"seed": 99}, {"seed": 5}]
    assert engine_seeds(group) == [10, 11, 12]
    top = 2**63 - 1
    assert engine_seeds([{"seed": top}, {"seed": 1}]) == [top - 1, top]  # seed + k stays a signed 64-bit int


class LoggedEngine(standin.Engine):
    """The stand-in, keeping each request body it got and each (seed, text) it generated upstream."""

    def __init__(self, *args):
        super().__init__(*args)
        self.bodies: list[dict] = []
        self.samples: list[tuple[int | None, str]] = []
        self.lock = threading.Lock()

    def chat(self, body):
        with self.lock:
            self.bodies.append(dict(body))
        return super().chat(body)

    def _upstream(self, body):
        status, out = super()._upstream(body)
        if status == 200:
            with self.lock:
                self.samples.append((body.get("seed"), out["choices"][0]["message"]["content"].strip()))
        return status, out


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """`transformers serve` on a tiny random LLaVA, and an image folder: (server, model_dir, image_root)."""
    tmp = tmp_path_factory.mktemp("seeds")
    texts = [CAPTION_DD, CAPTION_COD, "Name a colour.", "A red circle above a blue square.", "Step 1: x"] * 10
    model_dir = tiny_sampler_model(tmp / "tiny", texts)
    root = tmp / "images"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(root / f"{i}.png")
    with TransformersServer(sampling_copy(model_dir, tmp / "served")) as server:
        yield server, model_dir, root


def _engine(upstream, name: str, args: list[str]):
    """The stand-in for engine `name`, parsing that engine's real flags, on a free loopback port."""
    server, model_dir, _ = upstream
    model_flag = [str(model_dir)] if name == "vllm" else ["--model-path", str(model_dir)]
    ns = standin.engine_parser(name).parse_args(model_flag + ["--served-model-name", "perception", "--port", "0"] + args)
    eng = LoggedEngine(name, ns, server.url, server.model)
    httpd = standin.serve(eng, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return eng, httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def _plan():
    images = [{"id": f"img-{i}", "image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."}]} for i in range(2)]
    reqs = plan_requests(images, "caption", {"cod": 2, "dd": 1}, cycle_seed=11)
    return reqs + plan_requests([{"id": "t", "conversations": [{"from": "human", "value": "Name a colour."}]}], "text", 3, cycle_seed=11)


def _run(url: str, root, engine: str, share_prefill: bool = True) -> dict:
    # concurrency 1: transformers serve seeds a process-wide generator, so only serial requests reproduce there
    sampler = RemoteSampler(
        url, root, served_model="perception", engine=engine, share_prefill=share_prefill, concurrency=1, max_new_tokens=16, temperature=1.0, top_p=1.0
    )
    rows = {(r["id"], r["index"]): r for r in sampler.generate(_plan())}
    assert all(isinstance(r["text"], str) and "error" not in r for r in rows.values()), rows
    return rows


def _check_distinct_per_prompt(rows: dict) -> None:
    by_prompt: dict[tuple, list[str]] = {}
    for r in rows.values():
        by_prompt.setdefault((r["id"], r["prompt"]), []).append(r["text"])
    multi = [texts for texts in by_prompt.values() if len(texts) > 1]
    assert len(multi) == 3  # the CoD pair of each image, the 3 answers of the text prompt
    assert all(len(set(texts)) == len(texts) for texts in multi), multi


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vllm_n_requests_record_the_seed_each_choice_got(upstream):
    _, _, root = upstream
    eng, httpd, url = _engine(upstream, "vllm", ["--seed", "0"])
    try:
        first = _run(url, root, "vllm")
        bodies, samples = list(eng.bodies), list(eng.samples)
        second = _run(url, root, "vllm")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert {k: (r["text"], r["seed"]) for k, r in first.items()} == {k: (r["text"], r["seed"]) for k, r in second.items()}
    _check_distinct_per_prompt(first)
    # one request per prompt: n = 2 for an image's CoD pair, 1 for its DD caption, 3 for the text prompt
    assert sorted(b.get("n", 1) for b in bodies) == [1, 1, 2, 2, 3]
    for (rid, index), row in first.items():  # candidate k of a group: the group's first plan seed + k
        first_index = min(i for (r, i), other in first.items() if r == rid and other["format"] == row["format"])
        assert row["seed"] == candidate_seed(11, rid, first_index) + (index - first_index)
    # what the engine sampled each choice with is what the row says
    assert sorted(samples) == sorted((r["seed"], r["text"]) for r in first.values())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sglang_one_request_per_candidate_with_its_own_seed(upstream):
    _, _, root = upstream
    eng, httpd, url = _engine(upstream, "sglang", ["--random-seed", "0", "--enable-metrics", "--enable-deterministic-inference"])
    try:
        first = _run(url, root, "sglang")
        bodies, samples = list(eng.bodies), list(eng.samples)
        second = _run(url, root, "sglang")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert {k: (r["text"], r["seed"]) for k, r in first.items()} == {k: (r["text"], r["seed"]) for k, r in second.items()}
    _check_distinct_per_prompt(first)
    assert len(bodies) == len(first) == 9 and all("n" not in b for b in bodies)
    assert all(r["seed"] == candidate_seed(11, rid, index) for (rid, index), r in first.items())
    assert sorted(b["seed"] for b in bodies) == sorted(r["seed"] for r in first.values())
    assert sorted(samples) == sorted((r["seed"], r["text"]) for r in first.values())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_sglang_standin_copies_one_seed_to_every_n_choice(upstream):
    """Why SGLang gets no `n`: a request with n = 2 comes back as two samples drawn with the same seed."""
    _, _, root = upstream
    eng, httpd, url = _engine(upstream, "sglang", ["--enable-deterministic-inference"])
    try:
        sampler = RemoteSampler(url, root, served_model="perception", engine="sglang", concurrency=1, max_new_tokens=16, temperature=1.0)
        sampler.share_prefill = True  # what the sampler must not do for SGLang
        rows = {(r["id"], r["index"]): r for r in sampler.generate(_plan()[:2])}  # img-0's CoD pair
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert [b.get("n") for b in eng.bodies] == [2]
    [(s0, t0), (s1, t1)] = eng.samples
    assert s0 == s1 == candidate_seed(11, "img-0", 0) and t0 == t1
    assert rows[("img-0", 0)]["text"] == rows[("img-0", 1)]["text"]
