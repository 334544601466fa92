"""Step 2: seeds, candidate plans, the in-process sampler and the sample_candidates contract."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from rich.progress import Progress

from sicog.config import SampleConfig
from sicog.errors import UserError
from sicog.generate.local import GumbelNoise, LocalSampler
from sicog.generate.plan import plan_requests
from sicog.generate.sample import failures_path, sample_candidates
from sicog.generate.seeds import candidate_seed
from sicog.prompts import CAPTION_COD, CAPTION_DD, cot_question, da_question
from sicog.records import read_jsonl
from tiny import IMAGE_SIZE, tiny_sampler_model

CANDIDATE_KEYS = {"id", "task", "format", "index", "seed", "prompt", "image", "text", "model"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random LLaVA and a few images: (model_dir, image_root)."""
    tmp = tmp_path_factory.mktemp("gen")
    texts = [CAPTION_DD, CAPTION_COD, "What colour is the circle?", "A red circle above a blue square."] * 10
    model_dir = tiny_sampler_model(tmp / "tiny-model", texts)
    root = tmp / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "corrupt.png").write_bytes(b"not a png at all")
    return model_dir, root


def _records():
    return [
        {"id": "a", "image": "0.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour is the circle?"}]},
        {"id": "b", "image": "1.png", "conversations": [{"from": "human", "value": "How many shapes are there?\n<image>"}]},
    ]


# --- seeds -------------------------------------------------------------------------------------


def test_candidate_seed_is_a_fixed_sha256_value():
    # sha256('[0,"img-1",0]') first 8 bytes >> 1: the same in every process and on every platform.
    assert candidate_seed(0, "img-1", 0) == 4302122202277401515
    seeds = {candidate_seed(s, i, k) for s in (0, 1) for i in ("img-1", "img-2") for k in (0, 1, 2)}
    assert len(seeds) == 12
    assert all(0 <= s < 2**63 for s in seeds)
    # ids are strings: an int id and its string form are the same record
    assert candidate_seed(3, 7, 1) == candidate_seed(3, "7", 1)


# --- plans -------------------------------------------------------------------------------------


def test_caption_plan_cod_first_then_dd():
    reqs = plan_requests(_records(), "caption", {"dd": 1, "cod": 2}, cycle_seed=5)
    assert len(reqs) == 6
    for rid in ("a", "b"):
        mine = [r for r in reqs if r["id"] == rid]
        assert [r["index"] for r in mine] == [0, 1, 2]
        assert [r["format"] for r in mine] == ["cod", "cod", "dd"]
        assert [r["prompt"] for r in mine] == [CAPTION_COD, CAPTION_COD, CAPTION_DD]
        assert [r["seed"] for r in mine] == [candidate_seed(5, rid, k) for k in range(3)]
        assert all(r["task"] == "caption" and r["image"] == f"{'ab'.index(rid)}.png" for r in mine)


def test_vqa_plan_prompts_without_image_marker():
    reqs = plan_requests(_records(), "vqa", {"cot": 2, "da": 1}, cycle_seed=0)
    b = [r for r in reqs if r["id"] == "b"]
    assert [r["format"] for r in b] == ["cot", "cot", "da"]
    assert b[0]["prompt"] == cot_question("How many shapes are there?")
    assert b[2]["prompt"] == da_question("How many shapes are there?")
    assert all("<image>" not in r["prompt"] for r in reqs)
    assert len({r["seed"] for r in reqs}) == 6


def test_text_plan_has_no_image_and_rejects_bad_plans():
    recs = [{"id": "t1", "conversations": [{"from": "human", "value": "Name a colour."}]}]
    reqs = plan_requests(recs, "text", 3, cycle_seed=0)
    assert [(r["format"], r["index"], r["prompt"]) for r in reqs] == [("text", k, "Name a colour.") for k in range(3)]
    assert all("image" not in r for r in reqs)
    with pytest.raises(UserError, match="unknown caption formats"):
        plan_requests(_records(), "caption", {"cot": 2}, cycle_seed=0)
    with pytest.raises(UserError, match="needs an image"):
        plan_requests(recs, "vqa", {"cot": 1}, cycle_seed=0)


# --- sampler -----------------------------------------------------------------------------------


def test_gumbel_noise_samples_the_softmax_and_keeps_minus_inf():
    logits = torch.tensor([math.log(1), math.log(2), math.log(3), math.log(4), -math.inf])
    n = 4000
    noised = GumbelNoise(list(range(n)))(None, logits.expand(n, -1).clone())
    counts = torch.bincount(noised.argmax(-1), minlength=5).float() / n
    assert torch.allclose(counts[:4], torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03)
    assert counts[4] == 0 and torch.isneginf(noised[:, 4]).all()
    # the same seed gives the same noise
    assert torch.equal(GumbelNoise([7])(None, torch.zeros(1, 5)), GumbelNoise([7])(None, torch.zeros(1, 5)))


def _mixed_requests():
    reqs = plan_requests(_records(), "caption", {"cod": 2, "dd": 1}, cycle_seed=1)
    reqs += plan_requests(_records(), "vqa", {"cot": 1, "da": 1}, cycle_seed=1)
    reqs += plan_requests([{"id": "t", "conversations": [{"from": "human", "value": "Hi"}]}], "text", 2, cycle_seed=1)
    return reqs


def _texts(rows):
    return {(r["task"], r["id"], r["index"]): r["text"] for r in rows}


def test_sampling_does_not_depend_on_the_batch(world):
    model_dir, root = world
    reqs = _mixed_requests()
    batched = _texts(LocalSampler(model_dir, root, batch_size=16, max_new_tokens=24).generate(reqs))
    alone = _texts(LocalSampler(model_dir, root, batch_size=1, max_new_tokens=24).generate(reqs))
    reordered = _texts(LocalSampler(model_dir, root, batch_size=3, max_new_tokens=24).generate(reqs[::-1]))
    assert len(batched) == len(reqs)
    assert batched == alone == reordered
    assert sum(bool(t) for t in batched.values()) >= len(reqs) // 2  # the model does emit text


def test_a_candidate_is_the_same_alone_and_in_a_shuffled_batch(world):
    model_dir, root = world
    reqs = _mixed_requests()
    shuffled = random.Random(7).sample(reqs, len(reqs))
    kw = dict(max_new_tokens=16, min_new_tokens=16)  # every candidate runs all 16 decoding steps
    batched = _texts(LocalSampler(model_dir, root, batch_size=len(reqs), **kw).generate(shuffled))
    alone = LocalSampler(model_dir, root, batch_size=1, **kw)
    for req in reqs[::2]:
        assert _texts(alone.generate([req])) == {(req["task"], req["id"], req["index"]): batched[(req["task"], req["id"], req["index"])]}
    assert len(set(batched.values())) >= len(reqs) // 2  # the candidates are samples, not one text


def test_different_seeds_give_different_samples(world):
    model_dir, root = world
    base = plan_requests(_records()[:1], "caption", {"dd": 1}, cycle_seed=0)[0]
    reqs = [{**base, "index": k, "seed": candidate_seed(k, "a", 0)} for k in range(4)]
    texts = [r["text"] for r in LocalSampler(model_dir, root, max_new_tokens=16).generate(reqs)]
    assert len(set(texts)) >= 3


def test_greedy_is_deterministic_and_ignores_seeds(world):
    model_dir, root = world
    reqs = _mixed_requests()
    reqs += [{**reqs[0], "index": 9, "seed": 123}]  # same prompt and image, other seed
    sampler = LocalSampler(model_dir, root, batch_size=4, max_new_tokens=12, min_new_tokens=12)
    first = _texts(sampler.generate(reqs, greedy=True))
    second = _texts(LocalSampler(model_dir, root, batch_size=1, max_new_tokens=12, min_new_tokens=12).generate(reqs, greedy=True))
    assert first == second
    assert first[("caption", "a", 0)] == first[("caption", "a", 9)] != ""
    assert len(set(first.values())) >= 3  # greedy outputs depend on the prompt and image
    sampled = _texts(sampler.generate(reqs))
    assert sampled[("caption", "a", 0)] != sampled[("caption", "a", 9)]


@pytest.mark.parametrize(
    "image, reason",
    [("missing.png", "image not found"), ("corrupt.png", "corrupt image"), ("../0.png", "escapes the data root"), ("/etc/x.png", "absolute")],
)
def test_bad_image_gives_an_error_row(world, image, reason):
    model_dir, root = world
    good = plan_requests(_records()[:1], "caption", {"dd": 1}, cycle_seed=0)
    bad = [{**good[0], "id": "bad", "image": image}]
    rows = {r["id"]: r for r in LocalSampler(model_dir, root, max_new_tokens=4).generate(good + bad)}
    assert rows["bad"]["text"] is None and reason in rows["bad"]["error"]
    assert rows["a"]["text"] is not None and "error" not in rows["a"]


def test_sample_candidates_contract(world, tmp_path):
    model_dir, root = world
    records = _records() + [{"id": "gone", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>\nQ?"}]}]
    out = tmp_path / "cand" / "caption.jsonl"
    cfg = SampleConfig(max_new_tokens=8, batch_size=4)
    with Progress(disable=True) as progress:
        stats = sample_candidates(records, "caption", model_dir, out, cfg, cycle_seed=2, image_root=root, progress=progress)
        assert progress.tasks[0].completed == progress.tasks[0].total == 9
    rows = list(read_jsonl(out))
    failed = list(read_jsonl(failures_path(out)))
    assert failures_path(out).name == "caption.failures.jsonl"
    assert stats["candidates"] == len(rows) == 6 and stats["failures"] == len(failed) == 3
    assert 0 < stats["output_tokens"] <= 9 * 8 and stats["seconds"] >= 0
    assert [(r["id"], r["index"]) for r in rows] == [(i, k) for i in "ab" for k in range(3)]
    for r in rows:
        assert set(r) == CANDIDATE_KEYS
        assert isinstance(r["text"], str) and r["model"] == "tiny-model"
        assert r["seed"] == candidate_seed(2, r["id"], r["index"])
    assert all(f["id"] == "gone" and f["text"] is None and "not found" in f["error"] for f in failed)


def test_oversized_prompt_gives_an_error_row(world):
    model_dir, root = world
    recs = [{"id": "long", "conversations": [{"from": "human", "value": "colour " * 5000}]}]
    recs.append({"id": "short", "conversations": [{"from": "human", "value": "colour"}]})
    rows = {r["id"]: r for r in LocalSampler(model_dir, root, max_new_tokens=4).generate(plan_requests(recs, "text", 1, 0))}
    assert rows["long"]["text"] is None and "prompt too long" in rows["long"]["error"]
    assert rows["short"]["text"] is not None


def test_system_prompt_of_a_record_reaches_the_samplers_and_the_curated_record(world):
    """A pool record's `system` field (normalized from a system turn) travels in its requests, is
    rendered as a system message by the in-process sampler and sent as one to served engines, and
    stays with the candidate and the curated record made of it."""
    from sicog.curate.select import to_curated
    from sicog.generate.remote import chat_messages
    from sicog.records import Candidate

    model_dir, root = world
    system = "You answer in one word."
    recs = [{**_records()[0], "system": system}, {"id": "t", "system": system, "conversations": [{"from": "human", "value": "Name a colour."}]}]
    vqa = plan_requests(recs[:1], "vqa", {"da": 1}, cycle_seed=0)
    text = plan_requests(recs[1:], "text", 1, cycle_seed=0)
    assert [r["system"] for r in vqa + text] == [system, system]
    assert "system" not in plan_requests(_records()[:1], "vqa", {"da": 1}, cycle_seed=0)[0]
    sampler = LocalSampler(model_dir, root, max_new_tokens=3)
    assert sampler._chat_text(vqa[0]).startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image>\n")
    assert sampler._chat_text(text[0]) == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    rows = list(sampler.generate(vqa + text))
    assert all(r["system"] == system and isinstance(r["text"], str) for r in rows)
    assert [m["role"] for m in chat_messages(vqa[0], root)] == ["system", "user"] and chat_messages(text[0], root)[0] == {"role": "system", "content": system}
    assert chat_messages({**text[0], "system": None}, root) == [{"role": "user", "content": "Name a colour."}]
    candidate = Candidate.from_row(rows[0]).to_row()
    assert candidate["system"] == system and "system" not in Candidate.from_row({**rows[0], "system": None}).to_row()
    scored = {"id": candidate["id"], "task": "vqa", "candidates": [candidate], "scores": [1.0], "best": candidate["index"], "score": 1.0, "kept": True}
    (curated,) = to_curated([scored], cycle=1, conversation_threshold=0.95)
    assert curated["system"] == system and curated["conversations"][0]["from"] == "human"
