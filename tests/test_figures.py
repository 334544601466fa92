"""`sicog figures`: the README's figure tables come from a metrics.json, and --check catches stale ones."""

import json

import pytest
from typer.testing import CliRunner

from sicog.cli import app
from sicog.errors import UserError
from sicog.report.figures import figure_tables, read_block, replace_block

METRICS = {
    "world": {"seed": 3},
    "cycle": 1,
    "heldout": {"control": {"vqa_accuracy": 0.25, "caption_attribute_recall": None}, "base": {"vqa_accuracy": 0.5, "caption_attribute_recall": 0.125}},
    "steps": {"base": "align 2 + instruct 3"},
    "final_loss": {"base": 1.23456},
    "thresholds": {"vqa": 0.95, "caption": 0.8},
    "curation": {
        "vqa": {"kept_accuracy": 0.75, "selected_accuracy": 0.5, "mean_candidate_accuracy": 0.4, "kept": 3, "instances": 12},
        "text": {"kept": 2, "instances": 6},
    },  # no ground truth: no quality row
}
README = "intro\n<!-- figures:demo -->\nold numbers\n<!-- /figures:demo -->\noutro\n"


def test_tables_follow_the_metrics():
    tables = figure_tables(METRICS)
    lines = tables.splitlines()
    assert lines[0] == "World seed 3, cycle 1."
    assert lines.index("| base | 0.500 | 0.125 | 1.235 | align 2 + instruct 3 |") < lines.index("| control | 0.250 | n/a | n/a | n/a |")
    assert "| VQA accuracy (threshold 0.95) | 0.750 | 0.500 | 0.400 | 3 / 12 |" in lines
    assert not [line for line in lines if line.startswith("| text")]


def test_blocks_are_replaced_in_place_and_must_exist():
    text = replace_block(README, "demo", "new numbers\n")
    assert text == "intro\n<!-- figures:demo -->\nnew numbers\n<!-- /figures:demo -->\noutro\n"
    assert read_block(text, "demo") == "new numbers\n"
    with pytest.raises(UserError, match="figures:micro"):
        replace_block(README, "micro", "x")


def test_cli_writes_then_checks(tmp_path):
    metrics, readme = tmp_path / "metrics.json", tmp_path / "README.md"
    metrics.write_text(json.dumps(METRICS))
    readme.write_text(README)
    runner = CliRunner()
    args = ["figures", "--metrics", str(metrics), "--block", "demo", "--readme", str(readme)]
    assert runner.invoke(app, [*args, "--check"]).exit_code == 1  # stale: old numbers
    assert runner.invoke(app, args).exit_code == 0
    assert read_block(readme.read_text(), "demo") == figure_tables(METRICS)
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0
    both = runner.invoke(app, [*args, "--evidence", str(tmp_path)])
    assert both.exit_code == 2 and "exactly one of" in both.output
