"""The README's figure tables, written from a cycle's metrics.json and never by hand.

A table lives in the README between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->`. `make figures`
runs the demo and the micro check cycle and rewrites both blocks (`sicog figures`); the micro cycle
also runs in the test suite, which fails when its metrics and the committed micro block disagree, so a
change of code or of the lock that moves a figure cannot land with stale numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sicog.errors import UserError

MODEL_ORDER = ("base", "cycle", "control", "uncurated", "oracle")
TASK_LABELS = {"vqa": "VQA accuracy", "caption": "caption attribute recall", "text": "text"}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _quality(stats: Mapping) -> str | None:
    """The ground-truth measure a curation entry carries (`kept_<name>` + `mean_candidate_<name>`)."""
    for key in stats:
        name = key.removeprefix("mean_candidate_")
        if key.startswith("mean_candidate_") and f"kept_{name}" in stats:
            return name
    return None


def figure_tables(metrics: Mapping) -> str:
    """Markdown: held-out scores with step budgets, then curation quality against ground truth."""
    heldout, budgets, losses = metrics.get("heldout") or {}, metrics.get("steps") or {}, metrics.get("final_loss") or {}
    lines = [
        f"World seed {metrics['world']['seed']}, cycle {metrics.get('cycle', 1)}.",
        "",
        "| model | VQA accuracy | caption attribute recall | final training loss | step budget |",
        "|---|---|---|---|---|",
    ]
    for model in [m for m in MODEL_ORDER if m in heldout] + sorted(set(heldout) - set(MODEL_ORDER)):
        scores = heldout[model]
        lines.append(
            f"| {model} | {_fmt(scores.get('vqa_accuracy'))} | {_fmt(scores.get('caption_attribute_recall'))} "
            f"| {_fmt(losses.get(model))} | {budgets.get(model, 'n/a')} |"
        )
    curation, thresholds = metrics.get("curation") or {}, metrics.get("thresholds") or {}
    rows = []
    for task, stats in curation.items():
        name = _quality(stats)
        if name is None:
            continue
        label = f"{TASK_LABELS.get(task, task)} (threshold {_fmt(thresholds.get(task))[:4]})"
        rows.append(
            f"| {label} | {_fmt(stats.get(f'kept_{name}'))} | {_fmt(stats.get(f'selected_{name}'))} "
            f"| {_fmt(stats.get(f'mean_candidate_{name}'))} | {stats.get('kept')} / {stats.get('instances')} |"
        )
    if rows:
        lines += ["", "| curation (vs ground truth) | kept | best before threshold | mean candidate | kept / instances |", "|---|---|---|---|---|", *rows]
    return "\n".join(lines) + "\n"


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- figures:{re.escape(name)} -->\n)(.*?)(<!-- /figures:{re.escape(name)} -->)", re.S)


def read_block(text: str, name: str) -> str:
    match = _block(name).search(text)
    if match is None:
        raise UserError(f"no '<!-- figures:{name} -->' ... '<!-- /figures:{name} -->' block in the README")
    return match[2]


def replace_block(text: str, name: str, body: str) -> str:
    read_block(text, name)  # the markers must be there
    return _block(name).sub(lambda m: m[1] + body + m[3], text, count=1)
