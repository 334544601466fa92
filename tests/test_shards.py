"""Sharded, resumable sampling: stable shard assignment, chunk manifests, resume after kill -9
(local disk and S3), and collection independent of the shard count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from sicog import store
from sicog.config import SampleConfig
from sicog.errors import UserError
from sicog.generate.sample import collect_candidates, sample_shard
from sicog.generate.shards import MANIFEST, read_shard, shard_dir, shard_of, shard_records
from sicog.prompts import CAPTION_DD
from tiny import IMAGE_SIZE, tiny_sampler_model


def _text_records(n: int) -> list[dict]:
    return [{"id": f"t-{i:03d}", "conversations": [{"from": "human", "value": f"Name colour number {i}."}]} for i in range(n)]


class EchoSampler:
    """A deterministic stand-in backend (text = f(id, seed)) for the writer's own logic; it can be
    told to die after some chunks, as a killed process would."""

    def __init__(self, die_after: int | None = None):
        self.die_after, self.output_tokens, self.chunks_done = die_after, 0, 0

    def generate_chunks(self, chunks, advance=None):
        for k, chunk in enumerate(chunks):
            if self.die_after is not None and self.chunks_done == self.die_after:
                raise KeyboardInterrupt("killed")
            self.chunks_done += 1
            yield k, [{**r, "text": f"{r['id']}:{r['seed']}", "model": "echo"} for r in chunk[::-1]]


def _run(records, shard_uri, cfg, sampler, shard=0):
    import sicog.generate.sample as sample_mod

    original = sample_mod.make_sampler
    sample_mod.make_sampler = lambda *a: sampler
    try:
        return sample_shard(records, "text", None, shard_uri, shard, cfg, cycle_seed=3, image_root=".", model_id="echo")
    finally:
        sample_mod.make_sampler = original


def test_shard_assignment_is_a_stable_partition():
    records = _text_records(200)
    parts = [shard_records(records, i, 4) for i in range(4)]
    assert sorted(r["id"] for p in parts for r in p) == [r["id"] for r in records]
    assert all(p == sorted(p, key=lambda r: r["id"]) for p in parts)
    assert all(20 < len(p) < 80 for p in parts)  # roughly balanced
    # independent of the pool's order and of other records
    assert shard_records(records[::-1], 2, 4) == parts[2]
    assert [r for r in shard_records(records[:50], 2, 4)] == [r for r in parts[2] if r["id"] < "t-050"]
    with pytest.raises(ValueError, match="outside"):
        shard_records(records, 4, 4)


def test_shard_of_matches_sha256():
    import hashlib

    for rid in ("t-000", "img/ä-1", "42"):
        assert shard_of(rid, 5) == int.from_bytes(hashlib.sha256(rid.encode()).digest()[:8], "big") % 5


def test_resume_skips_finished_chunks_and_verifies_them(tmp_path):
    cfg = SampleConfig(shards=1, chunk_size=3)
    records = _text_records(10)
    uri = str(tmp_path / "shard")
    with pytest.raises(KeyboardInterrupt):
        _run(records, uri, cfg, EchoSampler(die_after=2))
    manifest = json.loads((tmp_path / "shard" / MANIFEST).read_text())
    assert sorted(manifest["chunks"]) == ["chunk-00000.jsonl", "chunk-00001.jsonl"] and not manifest["complete"]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shard").glob("chunk-*")}
    stats = _run(records, uri, cfg, EchoSampler())
    assert stats["chunks"] == 4 and stats["chunks_sampled"] == 2
    assert {n: (tmp_path / "shard" / n).stat().st_mtime_ns for n in before} == before  # finished chunks untouched
    full = str(tmp_path / "uninterrupted")
    _run(records, full, cfg, EchoSampler())
    assert list(read_shard(uri)) == list(read_shard(full))
    rows = list(read_shard(uri))
    assert [(r["id"], r["index"]) for r in rows] == [(r["id"], k) for r in records for k in range(3)]
    # a chunk whose bytes no longer match the manifest is redone, and only that one
    (tmp_path / "shard" / "chunk-00001.jsonl").write_text("garbage\n")
    assert _run(records, uri, cfg, EchoSampler())["chunks_sampled"] == 1
    assert list(read_shard(uri)) == rows
    # an unfinished shard cannot be read (nor collected)
    with pytest.raises(KeyboardInterrupt):
        _run(records, str(tmp_path / "half"), cfg, EchoSampler(die_after=1))
    with pytest.raises(UserError, match="not finished"):
        list(read_shard(str(tmp_path / "half")))


class SeparatorSampler(EchoSampler):
    """Texts holding the characters str.splitlines splits at but json.dumps(ensure_ascii=False) leaves as
    they are (a random-weight model sampled one of them in the paper dry run, and its row was cut in two)."""

    def generate_chunks(self, chunks, advance=None):
        for k, chunk in enumerate(chunks):
            yield k, [{**r, "text": f"{r['id']}\u2028a\u2029b\x85c\x1cd\x0be", "model": "echo"} for r in chunk]


def test_texts_with_unicode_line_separators_survive_the_shard_and_the_collection(tmp_path):
    records = _text_records(6)
    uri = str(tmp_path / "shard-00000")
    cfg = SampleConfig(chunk_size=4)
    _run(records, uri, cfg, SeparatorSampler())
    rows = list(read_shard(uri))
    assert {r["id"] for r in rows} == {r["id"] for r in shard_records(records, 0, cfg.shards)}
    assert all(r["text"] == f"{r['id']}\u2028a\u2029b\x85c\x1cd\x0be" for r in rows)
    assert collect_candidates([uri], tmp_path / "candidates.jsonl")["candidates"] == len(rows)
    from sicog.records import read_jsonl

    assert [r["text"] for r in read_jsonl(tmp_path / "candidates.jsonl")] == [r["text"] for r in rows]


def test_changed_plan_discards_old_chunks(tmp_path):
    uri = str(tmp_path / "shard")
    _run(_text_records(6), uri, SampleConfig(shards=1, chunk_size=2), EchoSampler())
    with pytest.warns(UserWarning, match="plan changed .*ids_sha256"):
        stats = _run(_text_records(8), uri, SampleConfig(shards=1, chunk_size=2), EchoSampler())
    assert stats["chunks_sampled"] == 4 and len(list(read_shard(uri))) == 24


def test_collected_candidates_do_not_depend_on_the_shard_count(tmp_path):
    records = _text_records(23)
    outs = []
    for n in (1, 3):
        cfg = SampleConfig(shards=n, chunk_size=4)
        uris = [shard_dir(str(tmp_path / f"work{n}"), "text", i) for i in range(n)]
        for i, uri in enumerate(uris):
            _run(records, uri, cfg, EchoSampler(), shard=i)
        stats = collect_candidates(uris, tmp_path / f"c{n}.jsonl")
        assert stats == {"candidates": 69, "failures": 0, "shards": n}
        outs.append((tmp_path / f"c{n}.jsonl").read_bytes())
    assert outs[0] == outs[1]
    with pytest.raises(UserError, match="twice"):  # the same shard given twice: a duplicate, refused
        collect_candidates([uris[0], uris[0]], tmp_path / "dup.jsonl")


# --- S3 -----------------------------------------------------------------------------------------


def test_shards_resume_from_s3(bucket):
    cfg = SampleConfig(shards=2, chunk_size=2)
    records = _text_records(9)
    uri = shard_dir(f"s3://{bucket}/run", "text", 1)
    with pytest.raises(KeyboardInterrupt):
        _run(records, uri, cfg, EchoSampler(die_after=1), shard=1)
    assert store.list_files(uri) == ["chunk-00000.jsonl", MANIFEST]
    stats = _run(records, uri, cfg, EchoSampler(), shard=1)
    assert stats["chunks_sampled"] == stats["chunks"] - 1
    mine = shard_records(records, 1, 2)
    assert [(r["id"], r["index"]) for r in read_shard(uri)] == [(r["id"], k) for r in mine for k in range(3)]


# --- kill -9 of a real sampling process -----------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random LLaVA and a text pool: (model_dir, world_dir)."""
    tmp = tmp_path_factory.mktemp("killworld")
    texts = [CAPTION_DD, "Name colour number 1.", "red green blue"] * 10
    model_dir = tiny_sampler_model(tmp / "tiny", texts)
    world_dir = tmp / "world"
    (world_dir / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(world_dir / "images" / "0.png")
    (world_dir / "pool_text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _text_records(40)))
    return model_dir, world_dir


def _sample_cmd(model_dir, world_dir, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sicog.cli",
        "sample",
        "--task",
        "text",
        "--model",
        str(model_dir),
        "--world",
        str(world_dir),
        "--out",
        str(out),
        "--shard",
        "0",
        "--shards",
        "1",
        "--set",
        "sample.chunk_size=2",
        "--set",
        "sample.max_new_tokens=24",
        "--set",
        "sample.batch_size=8",
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_mid_shard_then_resume_gives_the_same_candidates(world, tmp_path):
    model_dir, world_dir = world
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    full = tmp_path / "uninterrupted"
    subprocess.run(_sample_cmd(model_dir, world_dir, full), check=True, capture_output=True, env=env, timeout=300)

    out = tmp_path / "killed"
    manifest = out / "sampling" / "text" / "shard-00000" / MANIFEST
    proc = subprocess.Popen(_sample_cmd(model_dir, world_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text())["chunks"]:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    published = json.loads(manifest.read_text())
    assert not published["complete"], "the shard finished before the kill; nothing was interrupted"
    done_before = {name: (out / "sampling/text/shard-00000" / name).stat().st_mtime_ns for name in published["chunks"]}

    rerun = subprocess.run(_sample_cmd(model_dir, world_dir, out), check=True, capture_output=True, text=True, env=env, timeout=300)
    stats = json.loads((out / "shard.json").read_text())
    assert stats["chunks"] == 20 and stats["chunks_sampled"] == 20 - len(done_before), rerun.stdout
    for name, mtime in done_before.items():  # published chunks were not redone
        assert (out / "sampling/text/shard-00000" / name).stat().st_mtime_ns == mtime
    killed = list(read_shard(str(out / "sampling/text/shard-00000")))
    clean = list(read_shard(str(full / "sampling/text/shard-00000")))
    assert killed == clean  # same ids, seeds, indices and (local backend) texts
    keys = [(r["id"], r["index"]) for r in killed]
    assert len(keys) == len(set(keys)) == 120 and sorted({r["id"] for r in killed}) == [r["id"] for r in _text_records(40)]
