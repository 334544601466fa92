"""The one pipeline: it compiles to KFP IR, and kfp.local runs it end to end on the micro config."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from sicog.config import load_config
from sicog.pipelines.run import compile_pipeline
from sicog.report.figures import figure_tables, read_block

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/micro.yaml"


def test_pipeline_compiles_with_every_step(tmp_path):
    cfg = load_config(ROOT / "configs/demo.yaml")
    ir, _platform = yaml.safe_load_all(compile_pipeline(tmp_path / "cycle.yaml", cfg).read_text())
    executors = ir["deploymentSpec"]["executors"]
    assert all(e["container"]["image"].startswith("ghcr.io/") for e in executors.values())
    components = set(ir["components"])
    for step in ("start-cycle", "make-world", "init-model", "train", "sample-shard", "collect-candidates", "score", "curate", "evaluate", "report"):
        assert f"comp-{step}" in components, step
    # Step 2 is one sub-graph per task: its shards fan out (ParallelFor over sample_shards), then one
    # collect task; no sampling task is ever cached (they resume from the store instead).
    tasks = ir["root"]["dag"]["tasks"]
    assert {f"sample-task{s}" for s in ("", "-2", "-3")} <= set(tasks)
    sub = ir["components"]["comp-sample-task"]["dag"]["tasks"]
    (loop,) = [spec for spec in sub.values() if "parameterIterator" in spec]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("sample_shards")
    every = {t: spec for comp in [ir["root"], *ir["components"].values()] for t, spec in comp.get("dag", {}).get("tasks", {}).items()}
    sampling = [t for t in every if t.startswith(("sample-shard", "collect-candidates"))]
    assert sampling and all(every[t].get("cachingOptions", {}).get("enableCache") is not True for t in sampling)
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
    # The README's committed check figures are this run's: same config, same seed, same locked environment.
    committed = read_block((ROOT / "README.md").read_text(), "micro")
    assert figure_tables(metrics) == committed, "README's micro figures are stale: run `make figures`"


def test_a_second_cycle_of_a_series_starts_from_the_first(tmp_path):
    """Recurring cycles: each run of a series starts from the last successful cycle's model and seals
    its own lineage (what a weekly schedule on Kubeflow does, here under kfp.local)."""
    from safetensors.numpy import load_file

    series = tmp_path / "series"
    for run in ("first", "second"):
        proc = subprocess.run([sys.executable, "-m", "sicog.cli", "cycle", "--config", str(MICRO), "--out", str(tmp_path / run),
                               "--series", str(series)], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = [json.loads(p.read_text()) for p in sorted(series.glob("cycles/*/lineage.json"))]
    assert (first["cycle"], second["cycle"]) == (1, 2)
    assert first["started_from"] is None and second["started_from"] == first["models"]["cycle"]
    assert json.loads((tmp_path / "second/metrics.json").read_text())["cycle"] == 2
    assert second["code"]["sicog"] and second["config"]["model"]["start"] == first["models"]["cycle"]
    assert set(second["models"]) == {"base", "cycle", "perception", "reasoning"} and second["inputs"]["curated"]
    # The second cycle's starting model is the first cycle's model, weight for weight.
    start = sorted((tmp_path / "second/pipeline").glob("*/init-model/model"))[0]
    assert start.is_dir()
    previous, started = load_file(str(Path(first["models"]["cycle"]) / "model.safetensors")), load_file(str(start / "model.safetensors"))
    assert previous.keys() == started.keys() and all((previous[k] == started[k]).all() for k in previous)
    # Curated records carry the cycle number they were made in.
    curated = Path(second["inputs"]["curated"]) / "curated.jsonl"
    assert all(json.loads(line)["sicog"]["cycle"] == 2 for line in curated.read_text().splitlines())
