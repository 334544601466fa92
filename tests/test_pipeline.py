"""The one pipeline: it compiles to KFP IR, and kfp.local runs it end to end on the micro config."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from sicog.config import load_config
from sicog.pipelines.run import compile_pipeline

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/micro.yaml"


def test_pipeline_compiles_with_every_step(tmp_path):
    cfg = load_config(ROOT / "configs/demo.yaml")
    ir = yaml.safe_load(compile_pipeline(tmp_path / "cycle.yaml", cfg).read_text())
    executors = ir["deploymentSpec"]["executors"]
    assert all(e["container"]["image"].startswith("ghcr.io/") for e in executors.values())
    components = set(ir["components"])
    for step in ("make-world", "init-model", "train", "sample-shard", "collect-candidates", "score", "curate", "evaluate", "report"):
        assert f"comp-{step}" in components, step
    tasks = ir["root"]["dag"]["tasks"]
    assert {f"collect-candidates{s}" for s in ("", "-2", "-3")} <= set(tasks)
    # Sampling fans out over shards (one ParallelFor per task); no sampling task is ever cached.
    loops = [tasks[t] for t in tasks if "parameterIterator" in tasks[t]]
    assert len(loops) == 3 and all(loop["parameterIterator"]["items"]["inputParameter"].endswith("sample_shards") for loop in loops)
    every = {t: spec for comp in [ir["root"], *ir["components"].values()] for t, spec in comp.get("dag", {}).get("tasks", {}).items()}
    sampling = [t for t in every if t.startswith(("sample-shard", "collect-candidates"))]
    assert len(sampling) == 6 and all(every[t].get("cachingOptions", {}).get("enableCache") is not True for t in sampling)
    assert ir["root"]["inputDefinitions"]["parameters"]["sample_shards"]["defaultValue"] == list(range(cfg.sample.shards))
    assert ir["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]["world"]["seed"] == cfg.world.seed


def test_cycle_runs_end_to_end_under_kfp_local(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sicog.cli", "cycle", "--config", str(MICRO), "--out", str(out), "--ablations"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world"]["seed"] == 1
    assert set(metrics["heldout"]) == {"base", "cycle", "control", "uncurated"}
    for model in metrics["heldout"].values():
        assert 0.0 <= model["vqa_accuracy"] <= 1.0 and 0.0 <= model["caption_attribute_recall"] <= 1.0
    assert metrics["curation"]["vqa"]["instances"] == 12 and metrics["curation"]["caption"]["instances"] == 8
    assert metrics["curation"]["vqa"]["total"] <= 12
    assert metrics["curation"]["text"]["kept"] <= 3
    for step in ("world", "model-init", "train:stage1/align", "train:base/instruct", "sample:caption:shard-00000",
                 "sample:caption:shard-00001", "collect:caption", "score", "curate", "evaluate"):
        assert metrics["timings_s"][step] >= 0, step
    assert metrics["timings_s"]["train:base/instruct"] > 0 and metrics["timings_s"]["evaluate"] > 0
    # Stage budgets are documented per model, and the control gets the same stage-1.5 steps as the cycle.
    assert "pretrain 2 (curated)" in metrics["steps"]["cycle"] and "pretrain 2 (labeled)" in metrics["steps"]["control"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
