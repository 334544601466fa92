"""The per-cycle HTML report: one self-contained file a user can open or attach anywhere.

Input: the run's `metrics` (the same dict as metrics.json), per-task self-consistency `scores`
(`{"caption": {"best": [...], "all": [...]}, ...}`) and training `losses` (`{"cycle/pretrain":
[[step, loss], ...], ...}`). Output: `OUT/report.html`.

The file has no scripts and no external assets (figures are base64 PNGs), so it renders the same
offline, in a pipeline UI's artifact viewer or in a mail client. Every piece of text coming from the
run is escaped: record-derived strings (model names, step budgets, split names) must never become
markup. Undefined numbers (None, NaN) are shown as "n/a", never as 0.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from sicog.report import plots

MODEL_ORDER = ("base", "control", "cycle", "uncurated", "oracle")
MODEL_ROLE = {
    "base": "stage 1 + stage 2 (the paper's Table 1 baseline)",
    "control": "stage 1 + stage 1.5 on labeled data (same steps as the cycle) + stage 2",
    "cycle": "stage 1 + stage 1.5 on curated self-generated data + stage 2",
    "uncurated": "stage 1 + stage 1.5 on one random candidate per instance (same size and steps) + stage 2",
    "oracle": "stage 1 + stage 1.5 on the pool with its true labels (same steps; the ceiling) + stage 2",
}
COUNT_LABELS = {
    "quarantined": "quarantined input (per split)",
    "rejected": "rejected instances (per task)",
    "malformed": "malformed candidates (per task)",
    "sample_failures": "sampling failures",
}
TASK_ORDER = ("caption", "vqa", "text")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; }
figcaption, .note { color: #555; font-size: 0.9em; }
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt(value, digits: int = 3) -> str:
    """Numbers for humans: ints stay ints, floats get `digits` decimals, undefined is "n/a"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


class Cell:
    """A table cell: text (escaped on output) and whether it is numeric (right-aligned)."""

    def __init__(self, text, numeric: bool = False):
        self.text, self.numeric = text, numeric


def _num(value, digits: int = 3) -> Cell:
    return Cell(fmt(value, digits), numeric=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            cell = cell if isinstance(cell, Cell) else Cell(cell)
            cls = ' class="num"' if cell.numeric else ""
            cells.append(f"<td{cls}>{_esc(cell.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ordered(keys, order: Sequence[str]) -> list[str]:
    keys = list(keys)
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def _figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}"><figcaption>{_esc(caption)}</figcaption></figure>'


def _heldout_section(metrics: Mapping) -> str:
    heldout = metrics.get("heldout") or {}
    steps = metrics.get("steps") or {}
    rows = []
    for model in _ordered(heldout, MODEL_ORDER):
        values = heldout.get(model) or {}
        rows.append(
            [
                model,
                _num(values.get("vqa_accuracy")),
                _num(values.get("caption_attribute_recall")),
                steps.get(model, "n/a"),
                MODEL_ROLE.get(model, ""),
            ]
        )
    if not rows:
        return "<h2>Held-out comparison</h2><p>No held-out evaluation in this run.</p>"
    table = _table(["Model", "VQA accuracy", "Caption attribute recall", "Step budget", "Trained as"], rows)
    note = (
        '<p class="note">VQA accuracy: exact match of the normalised final answer (DA text or CoT step-4 '
        "conclusion). Caption attribute recall: share of ground-truth objects whose colour and shape the "
        "caption names. The control has the cycle's step budget on labeled data.</p>"
    )
    return "<h2>Held-out comparison</h2>" + table + note + _benchmark_table(heldout)


HELDOUT_METRICS = ("vqa_accuracy", "caption_attribute_recall")


def _benchmark_table(heldout: Mapping) -> str:
    """lmms-eval scores (eval.benchmarks), one column per benchmark; nothing when none ran."""
    names = sorted({k for values in heldout.values() for k in (values or {}) if k not in HELDOUT_METRICS})
    if not names:
        return ""
    rows = [[model, *(_num((heldout.get(model) or {}).get(n)) for n in names)] for model in _ordered(heldout, MODEL_ORDER)]
    note = (
        '<p class="note">Through lmms-eval, each benchmark\'s primary metric on a 0-1 scale (sicog.evaluate.lmms.BENCHMARKS); '
        "sicog_heldout_* is this cycle's held-out split as an lmms-eval task, scored like the table above.</p>"
    )
    return "<h3>Benchmarks</h3>" + _table(["Model", *names], rows) + note


def _check_result(check: Mapping) -> str:
    if check.get("passed") is True:
        return "pass"
    if _number(check.get("value")) is None:
        return "not measured"  # by the cycle model: a failed check, or skipped when its reference has no value either
    return "skipped (no reference value)" if check.get("passed") is None else "regression"


def _promotion_section(metrics: Mapping) -> str:
    """The promotion gate's decision: may this cycle's model start the next cycle of its series?"""
    decision = metrics.get("promotion")
    if not decision:
        return ""
    rows = []
    for check in decision.get("checks") or []:
        value, reference = _number(check.get("value")), _number(check.get("reference"))
        diff = value - reference if value is not None and reference is not None else None
        rows.append(
            [
                check.get("metric", ""),
                check.get("against", ""),
                _num(value, 4),
                _num(reference, 4),
                _num(diff, 4),
                _num(check.get("tolerance"), 4),
                _check_result(check),
            ]
        )
    verdict = "promoted" if decision.get("promoted") else "refused"
    previous = decision.get("previous")
    against = f"previous promoted cycle {previous.get('cycle')}" if previous else "no previous promoted cycle"
    parts = [
        "<h2>Promotion</h2>",
        f"<p><strong>{_esc(verdict)}</strong>: this cycle's model {'starts' if verdict == 'promoted' else 'does not start'} "
        f"the next cycle of its series ({_esc(against)}; tolerance {_esc(fmt(decision.get('tolerance'), 4))}).</p>",
    ]
    if rows:
        parts.append(_table(["Metric", "Against", "Cycle", "Reference", "Difference", "Tolerance", "Result"], rows))
    parts.append(f'<p class="note">{_esc(decision.get("reason", ""))}</p>')
    return "".join(parts)


def _quality_name(stats: Mapping) -> str | None:
    """The ground-truth measure a task's stats carry: `<name>` of `kept_<name>` + `mean_candidate_<name>`."""
    for key in stats:
        name = key[len("mean_candidate_") :] if key.startswith("mean_candidate_") else ""
        if name and f"kept_{name}" in stats:
            return name
    return None


def _curation_section(metrics: Mapping) -> str:
    curation = metrics.get("curation") or {}
    rows = []
    for task in _ordered(curation, TASK_ORDER):
        stats = curation.get(task) or {}
        name = _quality_name(stats)
        kept, total = stats.get("kept"), stats.get("total")
        k, t = _number(kept), _number(total)
        keep_rate = k / t if k is not None and t else None
        if name is None:
            quality = ["none (no ground truth)", _num(None), _num(None), _num(None), _num(None)]
        else:
            kept_q, mean_q = _number(stats.get(f"kept_{name}")), _number(stats.get(f"mean_candidate_{name}"))
            diff = kept_q - mean_q if kept_q is not None and mean_q is not None else None
            quality = [
                name.replace("_", " "),
                _num(kept_q),
                _num(stats.get(f"selected_{name}")),
                _num(mean_q),
                _num(diff),
            ]
        conversations = stats.get("conversations")
        rows.append(
            [task, *quality, Cell(f"{fmt(kept)} / {fmt(total)}", numeric=True), _num(keep_rate), _num(conversations) if conversations is not None else ""]
        )
    if not rows:
        return "<h2>Curation quality</h2><p>No curation statistics in this run.</p>"
    headers = ["Task", "Measure", "Kept", "Best before threshold", "Mean candidate", "Kept − mean", "Kept / total", "Keep rate", "Conversations"]
    note = (
        '<p class="note">Quality of the pseudo-labels against the world\'s ground truth: of the kept '
        "winners, of the best candidate of every instance before the threshold, and of the average "
        "candidate. Kept − mean is what self-consistency selection adds.</p>"
    )
    return "<h2>Curation quality</h2>" + _table(headers, rows) + note


def _settings_section(metrics: Mapping) -> str:
    similarity = metrics.get("similarity") or {}
    thresholds = metrics.get("thresholds") or {}
    rows = []
    for task in _ordered(set(similarity) | (set(thresholds) - {"conversation"}), TASK_ORDER):
        threshold = thresholds.get(task)
        shown = _num(threshold, 2) if threshold is not None else Cell("none (top-K by score)")
        rows.append([task, similarity.get(task, "n/a"), shown])
    if "conversation" in thresholds:
        rows.append(["caption → 5-turn conversation", similarity.get("caption", "n/a"), _num(thresholds.get("conversation"), 2)])
    if not rows:
        return ""
    return "<h2>Selection settings</h2>" + _table(["Task", "Similarity", "Keep threshold"], rows)


def _counts_section(metrics: Mapping) -> str:
    counts = metrics.get("counts") or {}
    rows = []
    for kind in _ordered(counts, tuple(COUNT_LABELS)):
        label = COUNT_LABELS.get(kind, kind)
        value = counts[kind]
        if isinstance(value, Mapping):
            if not value:
                rows.append([label, "(none)", _num(0)])
            for name in sorted(value):
                rows.append([label, name, _num(value[name])])
        else:
            rows.append([label, "", _num(value)])
    if not rows:
        return "<h2>Dropped and failed items</h2><p>No counts recorded.</p>"
    note = '<p class="note">Every dropped item is written to a file with its reason; nothing is dropped silently.</p>'
    return "<h2>Dropped and failed items</h2>" + _table(["What", "Where", "Count"], rows) + note


def _timings_section(metrics: Mapping) -> str:
    timings = metrics.get("timings_s") or {}
    total = sum(v for v in (_number(x) for x in timings.values()) if v is not None)
    rows = []
    for step, seconds in timings.items():
        value = _number(seconds)
        share = value / total if value is not None and total > 0 else None
        rows.append([step, _num(seconds, 1), _num(share * 100 if share is not None else None, 1)])
    if timings:
        rows.append(["sum of the steps above", _num(total, 1), _num(100.0 if total > 0 else None, 1)])
    parts = ["<h2>Timings</h2>"]
    parts.append(_table(["Step", "Seconds", "Share (%)"], rows) if rows else "<p>No timings recorded.</p>")
    if "peak_rss_mb" in metrics:
        parts.append(f"<p>Peak resident memory: {_esc(fmt(metrics.get('peak_rss_mb'), 0))} MB</p>")
    return "".join(parts)


def _world_section(metrics: Mapping) -> str:
    world = metrics.get("world") or {}
    if not world:
        return ""
    rows = [[key, world[key]] for key in world]
    return "<h2>World</h2>" + _table(["Setting", "Value"], rows)


def render_report(metrics: Mapping, scores: Mapping, losses: Mapping) -> str:
    """The report as one HTML string (see the module docstring for the inputs)."""
    seed = (metrics.get("world") or {}).get("seed", "n/a")
    title = f"SICOG cycle report (world seed {seed})"
    thresholds = metrics.get("thresholds") or {}
    figures = [
        _figure(
            plots.score_histograms(scores, thresholds),
            "self-consistency score histograms",
            "Self-consistency scores per task: all candidates (grey) and the best candidate of each "
            "instance (blue), with the keep threshold (red) and the caption conversation threshold (purple).",
        ),
        _figure(
            plots.precision_keep_curve(metrics.get("curation") or {}, thresholds),
            "keep rate and precision over thresholds",
            "Keep rate and ground-truth precision of the kept pseudo-labels at each threshold of the sweep; the red line is the configured threshold.",
        ),
        _figure(
            plots.loss_curves(losses),
            "training loss curves",
            "Training loss per stage; models trained on the same stage share a panel.",
        ),
    ]
    body = [
        f"<h1>{_esc(title)}</h1>",
        _heldout_section(metrics),
        _promotion_section(metrics),
        _curation_section(metrics),
        _settings_section(metrics),
        _counts_section(metrics),
        _timings_section(metrics),
        _world_section(metrics),
        "<h2>Figures</h2>",
        *figures,
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(part for part in body if part) + "\n</body>\n</html>\n"
    )


def write_report(out_dir: str | Path, metrics: Mapping, scores: Mapping, losses: Mapping) -> Path:
    """Write `out_dir/report.html` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(render_report(metrics, scores, losses), encoding="utf-8")
    return path
