"""Recurring cycles: the promotion gate, where a series' next cycle starts (refused cycles are skipped),
what a cycle's lineage records, and `sicog series report` over hand-built lineage files.

The end-to-end `sicog cycle --cycles 2` run is tests/test_pipeline.py's series test (one slow test)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sicog import lineage, store
from sicog.cli import app
from sicog.config import ConfigError, PromoteConfig, load_config, parameter_dict, validate_config
from sicog.errors import UserError
from sicog.report.series import series_png, series_rows, to_csv, to_markdown, write_series_report

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _heldout(cycle: dict, base: dict | None = None) -> dict:
    return {"base": base if base is not None else {"vqa_accuracy": 0.40, "caption_attribute_recall": 0.10}, "cycle": cycle}


def _previous(cycle_scores: dict, number: int = 1) -> dict:
    return {"cycle": number, "work_uri": "s3://b/series/cycles/x", "heldout": {"cycle": cycle_scores}}


# --- the gate -------------------------------------------------------------------------------------


def test_gate_promotes_a_cycle_that_holds_up_against_previous_and_base():
    decision = lineage.promotion(
        PromoteConfig(), _heldout({"vqa_accuracy": 0.45, "caption_attribute_recall": 0.11}), _previous({"vqa_accuracy": 0.44, "caption_attribute_recall": 0.12})
    )
    assert decision["promoted"] is True and decision["reason"].startswith("promoted: ")
    assert [(c["against"], c["metric"], c["passed"]) for c in decision["checks"]] == [
        ("previous", "vqa_accuracy", True),
        ("previous", "caption_attribute_recall", True),
        ("base", "vqa_accuracy", True),
        ("base", "caption_attribute_recall", True),
    ]
    # The reason names each metric, its value, the reference and the tolerance.
    assert "caption_attribute_recall 0.1100 vs previous cycle 1 0.1200 (-0.0100): within tolerance 0.0200" in decision["reason"]
    assert decision["previous"] == {"cycle": 1, "work_uri": "s3://b/series/cycles/x", "lineage": ""}


def test_gate_refuses_a_regression_against_the_previous_cycle():
    decision = lineage.promotion(
        PromoteConfig(),
        _heldout({"vqa_accuracy": 0.45, "caption_attribute_recall": 0.11}),
        _previous({"vqa_accuracy": 0.50, "caption_attribute_recall": 0.11}, number=4),
    )
    assert decision["promoted"] is False
    (failed,) = [c for c in decision["checks"] if c["passed"] is False]
    assert (failed["against"], failed["metric"], failed["value"], failed["reference"]) == ("previous", "vqa_accuracy", 0.45, 0.50)
    assert "vqa_accuracy 0.4500 vs previous cycle 4 0.5000 (-0.0500): regresses beyond tolerance 0.0200" in decision["reason"]
    assert decision["reason"].startswith("refused: ")


def test_gate_refuses_a_regression_against_its_own_base_model():
    decision = lineage.promotion(PromoteConfig(), _heldout({"vqa_accuracy": 0.45, "caption_attribute_recall": 0.05}), None)
    assert decision["promoted"] is False
    assert [c["metric"] for c in decision["checks"] if c["passed"] is False] == ["caption_attribute_recall"]
    # The series' first cycle has no previous cycle: those checks are skipped, and say so.
    assert all(c["passed"] is None for c in decision["checks"] if c["against"] == "previous")
    assert "vqa_accuracy 0.4500: the previous promoted cycle (none yet) has no value, skipped" in decision["reason"]
    # Only against previous: the same cycle passes.
    assert lineage.promotion(PromoteConfig(against=["previous"]), _heldout({"vqa_accuracy": 0.45, "caption_attribute_recall": 0.05}), None)["promoted"] is True


@pytest.mark.parametrize("base, promoted", [(0.52, True), (0.5201, False)])
def test_gate_tolerance_edge_a_drop_of_exactly_the_tolerance_passes(base, promoted):
    # 0.50 - 0.52 is -0.020000000000000018 in floating point: still "exactly the tolerance".
    decision = lineage.promotion(PromoteConfig(tolerance=0.02, against=["base"]), _heldout({"vqa_accuracy": 0.50}, base={"vqa_accuracy": base}), None)
    assert decision["promoted"] is promoted


def test_gate_with_missing_metrics_refuses_unmeasured_scores_and_skips_missing_references():
    gate = PromoteConfig(metrics=["vqa_accuracy", "mmmu_accuracy"])
    # A gated metric the cycle model did not measure (absent or null) but its reference did refuses it.
    for cycle in ({"vqa_accuracy": 0.5}, {"vqa_accuracy": 0.5, "mmmu_accuracy": None}):
        decision = lineage.promotion(gate, _heldout(cycle, base={"vqa_accuracy": 0.4, "mmmu_accuracy": 0.3}), _previous({"vqa_accuracy": 0.5}))
        assert decision["promoted"] is False
        assert "mmmu_accuracy: not measured for the cycle model, so it cannot pass against base" in decision["reason"]
        # ... while one that no model of the comparison measured is skipped, not a reason to refuse.
        decision = lineage.promotion(gate, _heldout(cycle), _previous({"vqa_accuracy": 0.5}))
        assert decision["promoted"] is True and decision["compared"] == ["vqa_accuracy"]
    # A benchmark the references did not run yet is skipped for them (a new benchmark never blocks a series).
    decision = lineage.promotion(gate, _heldout({"vqa_accuracy": 0.5, "mmmu_accuracy": 0.3}), _previous({"vqa_accuracy": 0.5}))
    assert decision["promoted"] is True
    skipped = [(c["against"], c["metric"]) for c in decision["checks"] if c["passed"] is None]
    assert skipped == [("previous", "mmmu_accuracy"), ("base", "mmmu_accuracy")]


def test_gate_compares_what_both_sides_measured_so_a_user_catalog_without_captions_is_promoted():
    """A user catalog's held-out rows have no caption score: no model of the comparison measured it, so it
    is not a reason to refuse a cycle that beats its base on VQA; the decision says what it compared."""
    heldout = _heldout({"vqa_accuracy": 0.55, "caption_attribute_recall": None}, base={"vqa_accuracy": 0.50, "caption_attribute_recall": None})
    decision = lineage.promotion(PromoteConfig(), heldout, None)
    assert decision["promoted"] is True and decision["compared"] == ["vqa_accuracy"]
    assert decision["reason"].startswith("promoted: compared vqa_accuracy: ")
    assert "caption_attribute_recall: measured by neither the cycle model nor base, skipped" in decision["reason"]
    # The cycle model lacking a score its reference has is still refused.
    refused = lineage.promotion(
        PromoteConfig(), _heldout({"vqa_accuracy": 0.55, "caption_attribute_recall": None}, base={"vqa_accuracy": 0.5, "caption_attribute_recall": 0.1}), None
    )
    assert refused["promoted"] is False and "caption_attribute_recall: not measured for the cycle model" in refused["reason"]


def test_gate_on_every_reported_metric_by_default_so_new_benchmarks_flow_through():
    heldout = _heldout(
        {"vqa_accuracy": 0.5, "caption_attribute_recall": 0.2, "mmmu_accuracy": 0.2},
        base={"vqa_accuracy": 0.4, "caption_attribute_recall": 0.1, "mmmu_accuracy": 0.3},
    )
    decision = lineage.promotion(PromoteConfig(), heldout, None)
    assert decision["promoted"] is False and "mmmu_accuracy 0.2000 vs base 0.3000 (-0.1000)" in decision["reason"]
    assert lineage.promotion(PromoteConfig(against=[]), heldout, None)["promoted"] is True  # the gate turned off
    assert lineage.promotion(PromoteConfig(), {"base": {}, "cycle": {}}, None)["promoted"] is False  # nothing measured


def test_promote_config_is_typed_and_documented():
    cfg = load_config(ROOT / "tests/micro.yaml", ["promote.tolerance=0.05", "promote.metrics=[vqa_accuracy]"])
    assert (cfg.promote.tolerance, cfg.promote.metrics, cfg.promote.against) == (0.05, ["vqa_accuracy"], ["previous", "base"])
    with pytest.raises(ConfigError, match="promote.against"):
        load_config(None, ["promote.against=[control]"])
    with pytest.raises(ConfigError, match="promote.tolerance"):
        load_config(None, ["promote.tolerance=-0.1"])
    assert all(field.description for field in PromoteConfig.model_fields.values())


# --- where the next cycle starts ------------------------------------------------------------------


def _seal(series: str, name: str, cycle: int, finished_at: float, **extra) -> str:
    record = {
        "cycle": cycle,
        "status": "succeeded",
        "finished_at": finished_at,
        "work_uri": store.join(series, "cycles", name),
        "models": {"cycle": store.join(series, "cycles", name, "steps/train/cycle/instruct")},
        **extra,
    }
    uri = store.join(series, "cycles", name, "lineage.json")
    store.write_text(uri, json.dumps(record))
    return uri


@pytest.mark.parametrize("where", ["local", "s3"])
def test_start_cycle_skips_a_refused_cycle(where, tmp_path, request):
    series = str(tmp_path / "series") if where == "local" else f"s3://{request.getfixturevalue('bucket')}/series"
    config = parameter_dict(load_config(ROOT / "tests/micro.yaml"))
    promoted = _seal(series, "20261101T030000Z-aaaa", 1, 100.0, promoted=True)
    _seal(series, "20261108T030000Z-bbbb", 2, 200.0, promoted=False)  # refused: stays, never a start
    nxt, work = lineage.start_cycle(config, series, "", "feedbeef")
    assert nxt["cycle"] == 2 and nxt["model"]["start"] == f"{series}/cycles/20261101T030000Z-aaaa/steps/train/cycle/instruct"
    assert nxt["promote"]["previous"] == promoted  # the gate's 'previous' is the cycle it starts from
    assert lineage.latest_cycle(series) == (promoted, json.loads(store.read_text(promoted)))
    assert [record["cycle"] for _, record in lineage.read_series(series)] == [1, 2]  # the refused cycle is still there
    # A later promoted cycle becomes the start; a cycle sealed before the gate (no `promoted`) counts as promoted.
    _seal(series, "20261115T030000Z-cccc", 2, 300.0, promoted=True)
    legacy = _seal(series, "20261122T030000Z-dddd", 3, 400.0)
    nxt, _ = lineage.start_cycle(config, series, "", "feedbeef")
    assert nxt["cycle"] == 4 and nxt["promote"]["previous"] == legacy
    # Only refused cycles: the series starts afresh.
    only_refused = store.join(series, "other")
    _seal(only_refused, "20261101T030000Z-eeee", 1, 100.0, promoted=False)
    nxt, _ = lineage.start_cycle(config, only_refused, "", "feedbeef")
    assert (nxt["cycle"], nxt["model"]["start"], nxt["promote"]["previous"]) == (1, "", "")


def test_a_cycle_folder_records_its_own_outputs_relative_to_itself(tmp_path, bucket):
    """A kfp.local run works in a local folder and publishes it whole; URIs under the folder are recorded
    relative to it, so the next cycle finds the model where the folder was published."""
    local = tmp_path / "series" / "cycles" / "c1"
    model = f"{local}/pipeline/sicog-cycle-1/train-cycle-instruct/trained"
    assert lineage.relative_uri(model, str(local)) == "pipeline/sicog-cycle-1/train-cycle-instruct/trained"
    assert lineage.relative_uri("s3://b/elsewhere/model", str(local)) == "s3://b/elsewhere/model"
    published = f"s3://{bucket}/series/cycles/c1/lineage.json"
    assert lineage.resolve_uri("pipeline/m", published) == f"s3://{bucket}/series/cycles/c1/pipeline/m"
    assert lineage.resolve_uri("/abs/m", published) == "/abs/m" and lineage.resolve_uri(None, published) is None
    store.write_text(published, json.dumps({"cycle": 1, "status": "succeeded", "finished_at": 1.0, "models": {"cycle": "pipeline/m"}}))
    nxt, _ = lineage.start_cycle(validate_config({}).model_dump(mode="json"), f"s3://{bucket}/series", "", "feedbeef")
    assert nxt["model"]["start"] == f"s3://{bucket}/series/cycles/c1/pipeline/m" and nxt["cycle"] == 2


def _metrics(cycle_vqa: float, promoted: bool, quarantined: int = 2) -> dict:
    """The parts of metrics.json (steps.report) that write_lineage records."""
    return {
        "heldout": _heldout({"vqa_accuracy": cycle_vqa, "caption_attribute_recall": 0.1}),
        "promotion": {
            "promoted": promoted,
            "reason": "promoted: ..." if promoted else "refused: ...",
            "tolerance": 0.02,
            "previous": None,
            "checks": [
                {"metric": "vqa_accuracy", "against": "base", "value": cycle_vqa, "reference": 0.4, "tolerance": 0.02, "passed": promoted, "reason": "..."}
            ],
        },
        "curation": {"caption": {"kept": 6, "total": 8}, "vqa": {"kept": 3, "total": 12, "kept_accuracy": 0.5}, "text": {"kept": 0, "total": 0}},
        "counts": {"quarantined": {"sample:vqa": quarantined, "world": 1}, "rejected": {"vqa": 9, "caption": 2}},
        "steps": {"cycle": "align 2 (align) + pretrain 2 (curated) + instruct 3 (base)"},
        "optimizer_steps": {"cycle": 7, "base": 5},
    }


def test_write_lineage_records_the_decision_and_the_data_counts(tmp_path):
    cfg = load_config(ROOT / "tests/micro.yaml")
    record = lineage.write_lineage(cfg, str(tmp_path / "work"), "run-1", {"cycle": "m"}, {"world": "w"}, _metrics(0.3, False))
    assert json.loads((tmp_path / "work/lineage.json").read_text()) == record
    assert record["status"] == "succeeded" and record["promoted"] is False and record["promotion"]["reason"] == "refused: ..."
    assert record["data"] == {
        "curated": {
            "caption": {"kept": 6, "total": 8, "keep_rate": 0.75},
            "vqa": {"kept": 3, "total": 12, "keep_rate": 0.25},
            "text": {"kept": 0, "total": 0, "keep_rate": None},
        },
        "quarantined": 3,
        "rejected": 11,
    }
    assert record["optimizer_steps"]["cycle"] == 7 and record["steps"]["cycle"].startswith("align 2")
    assert record["heldout"]["cycle"]["vqa_accuracy"] == 0.3
    assert not lineage.is_start(record)


# --- the series report ----------------------------------------------------------------------------


def _series(root: str) -> str:
    """Three sealed cycles written as the report step writes them (the second refused, the third
    started from the first and measured one more benchmark), plus an unfinished folder."""
    series = store.join(root, "series")
    cfg = load_config(ROOT / "tests/micro.yaml")
    names = ["20261101T030000Z-aaaa", "20261108T030000Z-bbbb", "20261115T030000Z-cccc"]
    first_model = store.join(series, "cycles", names[0], "model")
    for n, (name, vqa, promoted) in enumerate(zip(names, (0.45, 0.30, 0.47), (True, False, True))):
        cfg.cycle, cfg.model.start = (1, "") if n == 0 else (2, first_model)
        metrics = _metrics(vqa, promoted, quarantined=n)
        if n == 2:
            metrics["heldout"]["cycle"]["mmmu_accuracy"] = 0.25
        lineage.write_lineage(cfg, store.join(series, "cycles", name), f"run-{n}", {"cycle": store.join(series, "cycles", name, "model")}, {}, metrics)
    store.write_text(store.join(series, "cycles", "20261122T030000Z-dddd", "steps", "x.json"), "{}")  # unfinished: not a row
    return series


@pytest.mark.parametrize("where", ["local", "s3"])
def test_series_rows_come_from_the_lineage_files(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('bucket')}"
    rows = series_rows(_series(root))
    assert [(r["run"], r["cycle"], r["gate"], r["started from"]) for r in rows] == [
        (1, 1, "promoted", "fresh"),
        (2, 2, "refused (vqa_accuracy vs base)", "20261101T030000Z-aaaa"),
        (3, 2, "promoted", "20261101T030000Z-aaaa"),
    ]
    assert [r["cycle vqa_accuracy"] for r in rows] == [0.45, 0.30, 0.47] and rows[0]["base vqa_accuracy"] == 0.40
    assert [r["quarantined"] for r in rows] == [1, 2, 3] and rows[0]["kept vqa"] == 3 and rows[0]["keep rate caption"] == 0.75
    assert rows[0]["cycle step budget"].startswith("align 2") and rows[0]["cycle optimizer steps"] == 7
    assert "cycle mmmu_accuracy" not in rows[0] and rows[2]["cycle mmmu_accuracy"] == 0.25


def test_series_report_writes_markdown_csv_and_png(tmp_path):
    rows, paths = write_series_report(_series(str(tmp_path)), str(tmp_path / "out"))
    assert set(paths) == {"md", "csv", "png"} and Path(paths["png"]).read_bytes().startswith(PNG_MAGIC)
    table = list(csv.DictReader(io.StringIO(Path(paths["csv"]).read_text())))
    assert len(table) == 3 and table[1]["gate"] == "refused (vqa_accuracy vs base)" and table[2]["cycle mmmu_accuracy"] == "0.25"
    assert table[0]["cycle mmmu_accuracy"] == ""  # a metric added later: empty for the cycles before it
    md = Path(paths["md"]).read_text().splitlines()
    header = md[2].split(" | ")
    assert len(md) == 2 + 2 + 3 and "cycle mmmu_accuracy" in header
    assert "| 1 | 20261101T030000Z-aaaa | 1 |" in md[4] and "0.450" in md[4] and "n/a" in md[4]
    assert to_markdown(rows) in Path(paths["md"]).read_text() and to_csv(rows) == Path(paths["csv"]).read_text()
    assert series_png(rows[:1]).startswith(PNG_MAGIC)


def test_series_report_cli_prints_the_table_and_a_one_line_error_for_a_missing_series(tmp_path):
    runner = CliRunner()
    series = _series(str(tmp_path))
    result = runner.invoke(app, ["series", "report", series], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "20261115T030000Z-cccc" in result.stdout and "refused" in result.stdout
    assert (tmp_path / "series/report/series.png").is_file()  # default --out: SERIES/report
    result = runner.invoke(app, ["series", "report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.stderr.split())  # one line, wrapped by the console at its width
    assert message.startswith("error: no finished cycle in series") and "nowhere/cycles/*/lineage.json" in message.replace(" ", "")
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError):
        series_rows(str(tmp_path / "nowhere"))
