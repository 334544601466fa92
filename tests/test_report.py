"""The HTML report and the multi-seed evidence table, from hand-built metrics."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser

import pytest

from sicog.errors import UserError
from sicog.report import evidence_markdown, evidence_table, plots, write_evidence, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _metrics(seed: int = 0, base_vqa=0.5, cycle_vqa=0.6, control_vqa=0.55, kept=0.8, mean=0.7) -> dict:
    """A metrics.json as the pipeline writes it: some numbers undefined (None), no uncurated model."""
    return {
        "world": {"seed": seed},
        "similarity": {"caption": "embedding", "vqa": "hybrid", "text": "embedding"},
        "thresholds": {"caption": 0.85, "vqa": 0.95, "text": None, "conversation": 0.95},
        "heldout": {
            "base": {"vqa_accuracy": base_vqa, "caption_attribute_recall": 0.7},
            "cycle": {"vqa_accuracy": cycle_vqa, "caption_attribute_recall": None},
            "control": {"vqa_accuracy": control_vqa, "caption_attribute_recall": 0.72},
        },
        "steps": {"base": "align 100 + <b>instruct</b> 600", "cycle": "align 100 + pretrain 200 + instruct 600"},
        "curation": {
            "vqa": {
                "kept_accuracy": kept,
                "selected_accuracy": 0.72,
                "mean_candidate_accuracy": mean,
                "kept": 30,
                "total": 60,
                "sweep": [
                    {"threshold": 0.9, "keep_rate": 0.8, "precision": 0.75},
                    {"threshold": 0.95, "keep_rate": 0.5, "precision": 0.8},
                    {"threshold": 0.99, "keep_rate": 0.0, "precision": None},
                ],
            },
            "caption": {
                "kept_attribute_recall": None,
                "selected_attribute_recall": 0.6,
                "mean_candidate_attribute_recall": 0.55,
                "kept": 0,
                "total": 20,
                "conversations": 0,
                "sweep": [{"threshold": 0.8, "keep_rate": 0.1, "precision": 0.6}],
            },
            "text": {"kept": 10, "total": 10},
        },
        "counts": {"quarantined": {"pool_vqa": 2}, "rejected": {"vqa": 30, "caption": 20}, "sample_failures": 0, "malformed": {}},
        "timings_s": {"sample": 12.5, "train": 37.5},
    }


SCORES = {
    "caption": {"best": [0.9, 0.8, None], "all": [0.9, 0.8, 0.7, 0.75, 0.6, 0.65]},
    "vqa": {"best": [1.0, 0.97], "all": [1.0, 1.0, 0.2, 0.97, 0.9, float("nan")]},
    "text": {"best": [], "all": []},
}
LOSSES = {"base/instruct": [[0, 3.0], [10, 2.0], [20, 1.5]], "cycle/pretrain": [[0, 2.0], [5, None]], "control/pretrain": [[0, 1.9], [5, 1.2]]}


class _Checker(HTMLParser):
    """Fails on a closing tag that does not close the innermost open element (unbalanced markup);
    collects the text and every table as a list of rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.tables: list[list[list[str]]] = []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> with open {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] in ("td", "th"):
            self.tables[-1][-1][-1] += data


def test_report_is_self_contained_html_with_tables_and_three_pngs(tmp_path):
    path = write_report(tmp_path / "run", _metrics(), SCORES, LOSSES)
    assert path == tmp_path / "run" / "report.html"
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    text = " ".join(checker.text)

    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert page.count('<img src="data:image/png;base64,') == 3 == len(images)
    for data in images:
        assert base64.b64decode(data, validate=True).startswith(PNG_MAGIC)
    assert "<script" not in page.lower() and "http" not in page  # no JS, no external assets

    # Held-out table: models as rows, undefined numbers as n/a, no uncurated row when absent.
    heldout = checker.tables[0]
    assert heldout[0][:4] == ["Model", "VQA accuracy", "Caption attribute recall", "Step budget"]
    assert [row[0] for row in heldout[1:]] == ["base", "control", "cycle"]
    assert heldout[1][1:4] == ["0.500", "0.700", "align 100 + <b>instruct</b> 600"]
    assert heldout[2][3] == "n/a"  # no step budget given for the control
    assert heldout[3][1:3] == ["0.600", "n/a"]
    assert "uncurated" not in page
    # Run-derived text is escaped, never markup.
    assert "<b>instruct</b>" not in page and "&lt;b&gt;instruct&lt;/b&gt;" in page
    # Curation: kept/total, keep rate, kept − mean, similarity and thresholds.
    curation = {row[0]: row for row in checker.tables[1][1:]}
    assert curation["vqa"][1:8] == ["accuracy", "0.800", "0.720", "0.700", "0.100", "30 / 60", "0.500"]
    assert curation["caption"][2:6] == ["n/a", "0.600", "0.550", "n/a"]  # kept undefined: no difference
    assert curation["text"][6:8] == ["10 / 10", "1.000"]
    settings = {row[0]: row[1:] for row in checker.tables[2][1:]}
    assert settings["vqa"] == ["hybrid", "0.95"] and settings["text"] == ["embedding", "none (top-K by score)"]
    # Counts and timings.
    assert "quarantined input (per split)" in text and "pool_vqa" in text
    assert "malformed candidates (per task)" in text
    assert "50.0" in text and "25.0" in text  # sum of timings and share of "sample"


def test_report_survives_empty_inputs(tmp_path):
    page = write_report(tmp_path, {}, {}, {}).read_text()
    assert page.count('<img src="data:image/png;base64,') == 3
    assert "No held-out evaluation" in page


def test_plots_are_png_and_ignore_undefined_values():
    for png in (
        plots.score_histograms(SCORES, {"caption": 0.85, "vqa": float("nan"), "conversation": 0.95}),
        plots.precision_keep_curve(_metrics()["curation"], {"vqa": 0.95}),
        plots.loss_curves(LOSSES),
        plots.loss_curves({"run": [[0, 1.0], [1, 1000.0]]}),  # no "/": own panel; wide range: log axis
    ):
        assert png.startswith(PNG_MAGIC)


def test_evidence_mean_and_sample_std_match_hand_computation():
    runs = [
        _metrics(0, base_vqa=0.5, cycle_vqa=0.6, kept=0.8, mean=0.7),
        _metrics(1, base_vqa=0.6, cycle_vqa=0.6, kept=0.9, mean=0.7),
        _metrics(2, base_vqa=0.7, cycle_vqa=0.9, kept=None, mean=0.6),
    ]
    rows = {r["key"]: r for r in evidence_table(runs)["rows"]}

    base = rows["heldout.base.vqa_accuracy"]
    assert base["values"] == [0.5, 0.6, 0.7] and base["n"] == 3
    assert base["mean"] == pytest.approx(0.6)
    assert base["std"] == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)

    cycle = rows["heldout.cycle.vqa_accuracy"]
    assert cycle["mean"] == pytest.approx(0.7)
    assert cycle["std"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0.04) / 2))

    delta = rows["heldout.cycle_minus_base.vqa_accuracy"]  # paired per seed: 0.1, 0.0, 0.2
    assert delta["values"] == pytest.approx([0.1, 0.0, 0.2])
    assert delta["mean"] == pytest.approx(0.1) and delta["std"] == pytest.approx(0.1)
    assert "heldout.cycle_minus_uncurated.vqa_accuracy" not in rows  # no uncurated model in these runs
    assert "heldout.oracle_minus_base.vqa_accuracy" not in rows and "heldout.cycle_minus_oracle.vqa_accuracy" not in rows

    # The oracle (stage 1.5 on the pool's true labels): its paired gain over the base and the cycle's distance to it.
    with_oracle = [dict(m, heldout={**m["heldout"], "oracle": {"vqa_accuracy": v}}) for m, v in zip(runs, (0.7, 0.8, 0.9))]
    rows = {r["key"]: r for r in evidence_table(with_oracle)["rows"]}
    assert rows["heldout.oracle_minus_base.vqa_accuracy"]["values"] == pytest.approx([0.2, 0.2, 0.2])
    assert rows["heldout.cycle_minus_oracle.vqa_accuracy"]["values"] == pytest.approx([-0.1, -0.2, 0.0])
    assert "oracle − base: VQA accuracy" in evidence_markdown(evidence_table(with_oracle), "sicog evidence")

    # Undefined values are left out, not counted as zero.
    gain = rows["curation.vqa.kept_minus_mean_accuracy"]
    assert gain["values"][2] is None and gain["n"] == 2
    assert gain["mean"] == pytest.approx(0.15)
    assert gain["std"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert rows["curation.vqa.keep_rate"]["mean"] == pytest.approx(0.5)
    recall = rows["heldout.cycle.caption_attribute_recall"]
    assert recall["n"] == 0 and recall["mean"] is None and recall["std"] is None

    single = {r["key"]: r for r in evidence_table(runs[:1])["rows"]}["heldout.base.vqa_accuracy"]
    assert single["mean"] == pytest.approx(0.5) and single["std"] is None  # one seed: spread undefined


def test_evidence_markdown_and_files(tmp_path):
    runs = [_metrics(0), _metrics(1, base_vqa=0.7)]
    command = "sicog evidence --config configs/demo.yaml --seeds 2 --out runs/evidence"
    md = evidence_markdown(evidence_table(runs), command)
    assert md.index(command) < md.index("| Quantity |")
    assert "| Quantity | mean ± std | seed 0 | seed 1 |" in md
    assert "| base: VQA accuracy | 0.600 ± 0.141 | 0.500 | 0.700 |" in md
    assert "| cycle: caption attribute recall | n/a | n/a | n/a |" in md

    path = write_evidence(tmp_path / "ev", runs, command)
    assert path.read_text(encoding="utf-8") == md
    saved = json.loads((tmp_path / "ev" / "evidence.json").read_text())
    assert saved["command"] == command and saved["seeds"] == [0, 1] and saved["n_runs"] == 2
    with pytest.raises(UserError, match="at least one seed"):
        evidence_table([])


def test_report_shows_the_promotion_decision(tmp_path):
    from sicog.config import PromoteConfig
    from sicog.lineage import promotion

    metrics = _metrics(cycle_vqa=0.45)  # base 0.5: a drop of 0.05, beyond the default tolerance
    metrics["promotion"] = promotion(PromoteConfig(), metrics["heldout"], {"cycle": 3, "heldout": {"cycle": {"vqa_accuracy": 0.44}}})
    checker = _Checker()
    checker.feed(write_report(tmp_path, metrics, SCORES, LOSSES).read_text())
    text = " ".join("".join(checker.text).split())
    assert "refused: this cycle's model does not start the next cycle of its series (previous promoted cycle 3; tolerance 0.0200)" in text
    (gate,) = [t for t in checker.tables if t[0][0] == "Metric"]
    rows = {(row[0], row[1]): row[2:] for row in gate[1:]}
    assert rows[("vqa_accuracy", "previous")] == ["0.4500", "0.4400", "0.0100", "0.0200", "pass"]
    assert rows[("vqa_accuracy", "base")] == ["0.4500", "0.5000", "-0.0500", "0.0200", "regression"]
    assert rows[("caption_attribute_recall", "base")] == ["n/a", "0.7000", "n/a", "0.0200", "not measured"]  # cycle has None
    assert rows[("caption_attribute_recall", "previous")][4] == "not measured"
    # Without a decision (a metrics.json from before the gate) there is no section.
    assert "Promotion" not in write_report(tmp_path / "old", _metrics(), SCORES, LOSSES).read_text()
