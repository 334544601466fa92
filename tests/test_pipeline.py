"""The one pipeline: it compiles to KFP IR, and kfp.local runs it end to end on the micro config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sicog.config import load_config
from sicog.pipelines.run import compile_pipeline
from sicog.records import read_jsonl
from sicog.report.figures import figure_tables, read_block

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/micro.yaml"


def test_pipeline_compiles_with_every_step(tmp_path):
    cfg = load_config(ROOT / "configs/demo.yaml")
    ir, _platform = yaml.safe_load_all(compile_pipeline(tmp_path / "cycle.yaml", cfg).read_text())
    executors = ir["deploymentSpec"]["executors"]
    assert all(e["container"]["image"].startswith("ghcr.io/") for e in executors.values())
    components = set(ir["components"])
    for step in (
        "start-cycle",
        "make-world",
        "init-model",
        "train",
        "extract-backbone",
        "sample-shard",
        "collect-candidates",
        "score",
        "curate",
        "evaluate",
        "report",
    ):
        assert f"comp-{step}" in components, step
    # Step 2 is one sub-graph per task: its shards fan out (ParallelFor over sample_shards), then one
    # collect task; no sampling task is ever cached (they resume from the store instead).
    tasks = ir["root"]["dag"]["tasks"]
    assert {f"sample-task{s}" for s in ("", "-2", "-3")} <= set(tasks)
    # Text-only prompts are answered by the backbone LLM (paper App. A), extracted from the base model.
    samplers = {
        spec["inputs"]["parameters"]["task"]["runtimeValue"]["constant"]: spec["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
        for name, spec in tasks.items()
        if name.startswith("sample-task")
    }
    assert samplers["text"] == {"outputArtifactKey": "backbone", "producerTask": "extract-backbone"}
    assert samplers["caption"]["producerTask"].startswith("train") and samplers["vqa"]["producerTask"].startswith("train")
    base = tasks["extract-backbone"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"]
    assert tasks[base]["inputs"]["parameters"]["name"]["runtimeValue"]["constant"] == "base/instruct"
    sub = ir["components"]["comp-sample-task"]["dag"]["tasks"]
    assert set(sub) == {"sample-shards", "collect-candidates"}  # the fan-out, then the one collector after it
    assert sub["collect-candidates"]["dependentTasks"] == ["sample-shards"]
    fanout = ir["components"]["comp-sample-shards"]["dag"]["tasks"]
    (loop,) = [spec for spec in fanout.values() if "parameterIterator" in spec]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("sample_shards")
    every = {t: spec for comp in [ir["root"], *ir["components"].values()] for t, spec in comp.get("dag", {}).get("tasks", {}).items()}
    sampling = [t for t in every if t.startswith(("sample-shard", "collect-candidates"))]
    assert sampling and all(every[t].get("cachingOptions", {}).get("enableCache") is not True for t in sampling)
    assert ir["root"]["inputDefinitions"]["parameters"]["sample_shards"]["defaultValue"] == list(range(cfg.sample.shards))
    assert ir["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]["world"]["seed"] == cfg.world.seed


@pytest.mark.slow
@pytest.mark.timeout(1200)  # one micro cycle (and its ablations) under kfp.local: ~3 min here, more on a loaded machine
def test_cycle_runs_end_to_end_under_kfp_local(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sicog.cli", "cycle", "--config", str(MICRO), "--out", str(out), "--ablations"],
        capture_output=True,
        text=True,
        timeout=900,
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
    for step in (
        "world",
        "model-init",
        "train:stage1/align",
        "train:base/instruct",
        "sample:caption:shard-00000",
        "sample:caption:shard-00001",
        "collect:caption",
        "score",
        "curate",
        "evaluate",
    ):
        assert metrics["timings_s"][step] >= 0, step
    assert metrics["timings_s"]["train:base/instruct"] > 0 and metrics["timings_s"]["evaluate"] > 0
    # Stage budgets are documented per model, and the control gets the same stage-1.5 steps as the cycle.
    assert "pretrain 2 (curated)" in metrics["steps"]["cycle"] and "pretrain 2 (labeled)" in metrics["steps"]["control"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    # The README's committed check figures are this run's: same config, same seed, same locked environment.
    committed = read_block((ROOT / "README.md").read_text(), "micro")
    assert figure_tables(metrics) == committed, "README's micro figures are stale: run `make figures`"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two micro cycles under kfp.local, ~5 min each on a loaded machine
def test_cycles_of_a_series_run_one_after_another_each_from_the_last_promoted(tmp_path):
    """Recurring cycles: two cycles of a series (what a weekly schedule on Kubeflow does, here under
    kfp.local); each seals its lineage with the promotion decision and the second takes the first's model
    as its foundation model (paper App. G). The series is self-contained: the first run's --out folder is
    deleted before the second cycle starts. The tolerance is 1 so the gate promotes whatever the micro
    scores (refusals are tested in test_series.py); the decision and its references are still the real ones."""
    import shutil

    from safetensors.numpy import load_file

    from sicog.lineage import resolve_uri

    series = tmp_path / "series"
    options = ["--config", str(MICRO), "--series", str(series), "--set", "promote.tolerance=1.0", "--set", "train.carry_curated=true"]
    for run in (1, 2):
        proc = subprocess.run(
            [sys.executable, "-m", "sicog.cli", "cycle", "--out", str(tmp_path / f"run-{run}"), *options], capture_output=True, text=True, timeout=1800
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Logging error" not in proc.stderr
        if run == 1:
            shutil.rmtree(tmp_path / "run-1")  # everything a later cycle reads lives under the series folder
    sealed = sorted(series.glob("cycles/*/lineage.json"), key=lambda p: json.loads(p.read_text())["finished_at"])
    first, second = (json.loads(p.read_text()) for p in sealed)
    uri = lambda record, name, where="models": resolve_uri(record[where][name], str(sealed[[first, second].index(record)]))  # noqa: E731
    assert (first["cycle"], second["cycle"]) == (1, 2) and first["promoted"] and second["promoted"]
    assert first["started_from"] is None and second["started_from"] == uri(first, "cycle")
    assert json.loads((tmp_path / "run-2/metrics.json").read_text())["cycle"] == 2
    assert second["code"]["sicog"] and second["config"]["model"]["start"] == uri(first, "cycle")
    assert set(second["models"]) == {"base", "cycle", "perception", "reasoning"} and second["inputs"]["curated"]
    # The gate compared the second cycle with the first cycle's recorded scores and with its own base.
    assert first["promotion"]["previous"] is None and second["promotion"]["previous"]["cycle"] == 1
    assert second["config"]["promote"]["previous"] == str(sealed[0])
    for check in second["promotion"]["checks"]:
        owner = first["heldout"]["cycle"] if check["against"] == "previous" else second["heldout"]["base"]
        assert check["reference"] == owner[check["metric"]] and check["value"] == second["heldout"]["cycle"][check["metric"]]
    assert "Promotion" in (tmp_path / "run-2/report.html").read_text()
    # What the series report reads is in the lineage: data counts and step budgets.
    assert second["data"]["curated"]["vqa"]["total"] <= 12 and second["optimizer_steps"]["cycle"] > 0
    # Paper App. G: the first cycle's model is the second cycle's foundation model, read where it is (not
    # copied). Stages 1 and 2 are not re-run: the second cycle's base model is that model, weight for weight,
    # and stage 1.5 starts from it.
    previous = load_file(str(Path(uri(first, "cycle")) / "model.safetensors"))
    assert second["config"]["model"]["foundation"] and not first["config"]["model"]["foundation"]
    base = load_file(str(Path(uri(second, "base")) / "model.safetensors"))
    assert previous.keys() == base.keys() and all((previous[k] == base[k]).all() for k in previous)
    lineage = json.loads((Path(uri(second, "cycle")) / "lineage.json").read_text())
    assert [e["name"] for e in lineage][-2:] == ["cycle/pretrain", "cycle/instruct"]
    assert [e["name"] for e in lineage].count("stage1/align") == 1  # cycle 1's, not a second one
    # train.carry_curated: stage 1.5 of cycle 2 trained on its own curated data plus cycle 1's.
    assert second["config"]["train"]["earlier_curated"] == [uri(first, "curated", "inputs")]
    count = lambda folder: len(list(read_jsonl(Path(folder) / "curated.jsonl")))  # noqa: E731
    total = lambda entry: entry["records"] + sum(entry.get("skipped", {}).values())  # noqa: E731 (records read, kept or not)
    first_pretrain, second_pretrain = [e for e in lineage if e["name"] == "cycle/pretrain"]
    assert total(second_pretrain) == total(first_pretrain) + count(uri(second, "curated", "inputs"))  # the same labeled mix both times
    # Curated records carry the cycle number they were made in.
    curated = Path(uri(second, "curated", "inputs")) / "curated.jsonl"
    assert all(row["sicog"]["cycle"] == 2 for row in read_jsonl(curated))
    # And the series report reads both cycles back.
    proc = subprocess.run(
        [sys.executable, "-m", "sicog.cli", "series", "report", str(series), "--out", str(tmp_path / "sr")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((tmp_path / "sr/series.csv").read_text().splitlines()) == 3 and (tmp_path / "sr/series.png").stat().st_size > 0
