"""The cycle on a user's own data: a catalog of LLaVA-shaped files, not the procedural world.

The micro world's records are rewritten in the shapes real datasets come in: a LLaVA-558k-style JSON
array (no ids, `<image>` at the end of the turn, nested image folders), a LLaVA-665k-style JSONL
(system turns, text-only rows, a malformed line), a Hugging Face `save_to_disk` folder with the
images inside, and unlabeled pools whose images live in S3 (moto). kfp.local then runs the whole
cycle on the tiny model through `data.catalog`: the same code path as the demo, whose world is just
one more catalog.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sicog import store
from sicog.records import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/micro.yaml"


def _write_jsonl(path: Path, rows: list[dict], extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


def _user_data(world: Path, data: Path, bucket: str) -> Path:
    """The world's roles as a user would bring them; returns the catalog file."""
    import datasets

    # align: a JSON array, no ids, `<image>` after the text, images two folders deep, plus a missing image.
    nested = data / "558k" / "images" / "00000"
    nested.mkdir(parents=True)
    align = []
    for rec in read_jsonl(world / "align.jsonl"):
        name = Path(rec["image"]).name
        shutil.copy(world / rec["image"], nested / name)
        human, gpt = rec["conversations"]
        align.append({"image": f"00000/{name}", "conversations": [{"from": "human", "value": human["value"].replace("<image>\n", "") + "\n<image>"}, gpt]})
    align.append({"image": "00000/missing.png", "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "Nothing."}]})
    (data / "558k" / "chat.json").write_text(json.dumps(align))

    # instruct: JSONL with a system turn on every third record and one malformed line; images beside it.
    shutil.copytree(world / "images", data / "665k" / "images")
    instruct = []
    for i, rec in enumerate(read_jsonl(world / "base.jsonl")):
        rec.pop("meta", None)
        if i % 3 == 0:
            rec["conversations"] = [{"from": "system", "value": "You are a careful assistant."}, *rec["conversations"]]
        instruct.append(rec)
    _write_jsonl(data / "665k" / "mix.jsonl", instruct, extra='{"id": "broken", "conversations": [\n')

    # perception: a Hugging Face save_to_disk folder with the image bytes inside; reasoning: JSONL.
    perception = list(read_jsonl(world / "perception.jsonl"))
    ds = datasets.Dataset.from_list(
        [{"id": r["id"], "image": {"bytes": (world / r["image"]).read_bytes(), "path": None}, "conversations": r["conversations"]} for r in perception]
    ).cast_column("image", datasets.Image(decode=False))
    ds.save_to_disk(str(data / "perception-hf"))
    shutil.copytree(world / "images", data / "reasoning" / "images")
    shutil.copy(world / "reasoning.jsonl", data / "reasoning" / "reasoning.jsonl")

    # pools: records here, images in the bucket; ground truth and held-out rows as the world has them.
    for rec in list(read_jsonl(world / "pool_images.jsonl")) + list(read_jsonl(world / "pool_vqa.jsonl")):
        store.write_bytes(f"s3://{bucket}/pool/{rec['image']}", (world / rec["image"]).read_bytes())
    for name in ("pool_images", "pool_vqa", "pool_text", "truth", "heldout"):
        shutil.copy(world / f"{name}.jsonl", data / f"{name}.jsonl")
    shutil.copytree(world / "images", data / "images")
    catalog = {
        "align": {"name": "llava558k", "uri": "558k/chat.json", "images": "558k/images"},
        "instruct": {"name": "llava665k", "uri": "665k/mix.jsonl"},
        "perception": {"name": "dd-cod", "uri": "perception-hf", "format": "hf"},
        "reasoning": {"name": "da-cot", "uri": "reasoning/reasoning.jsonl"},
        # The pools and their ground truth share ids: kept unprefixed, so truth joins the candidates.
        "pool_images": {"uri": "pool_images.jsonl", "images": f"s3://{bucket}/pool", "prefix_ids": False},
        "pool_vqa": {"uri": "pool_vqa.jsonl", "images": f"s3://{bucket}/pool", "prefix_ids": False},
        "pool_text": {"uri": "pool_text.jsonl", "prefix_ids": False},
        "truth": {"uri": "truth.jsonl", "prefix_ids": False},
        "heldout": {"uri": "heldout.jsonl"},
    }
    path = data / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a micro cycle under kfp.local: ~4 min here
def test_a_cycle_runs_on_a_catalog_of_user_datasets(bucket, tmp_path):
    world = tmp_path / "world"
    made = subprocess.run(
        [sys.executable, "-m", "sicog.cli", "world", "--config", str(MICRO), "--out", str(world)], capture_output=True, text=True, timeout=300
    )
    assert made.returncode == 0, made.stderr[-2000:]
    catalog = _user_data(world, tmp_path / "data", bucket)

    check = subprocess.run([sys.executable, "-m", "sicog.cli", "data", "check", str(catalog), "--json"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sicog.cli", "cycle", "--config", str(MICRO), "--out", str(out), "--set", f"data.catalog={catalog}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # Every role was read from the user's files: counts per role, the bad rows quarantined by reason.
    counts = metrics["world"]
    assert counts["align"] == len(list(read_jsonl(world / "align.jsonl"))) + 1 and counts["pool_vqa"] == 12
    assert metrics["counts"]["quarantined"]["train:base/instruct"] == 1  # the malformed line
    # The missing image is found when stage 1 loads it: skipped and counted in the model's lineage.
    lineages = [json.loads(p.read_text()) for p in out.rglob("lineage.json") if p.parent.name != "run"]
    align = [entry for lineage in lineages if isinstance(lineage, list) for entry in lineage if entry["name"] == "stage1/align"]
    assert align and all(entry["skipped"] == {"bad_image": 1} for entry in align)
    # Pools sampled from S3 images; curation joined its ground truth through the unprefixed ids.
    assert metrics["curation"]["vqa"]["instances"] == 12 and metrics["curation"]["caption"]["instances"] == 8
    assert "kept_accuracy" in metrics["curation"]["vqa"]
    assert set(metrics["heldout"]) == {"base", "cycle", "control"}
    assert all(0 <= m["vqa_accuracy"] <= 1 for m in metrics["heldout"].values())
