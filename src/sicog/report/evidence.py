"""The multi-seed evidence table: what the README quotes, with the command that produced it.

Input: one metrics dict (the metrics.json of a cycle run) per seed. Output: per quantity the
per-seed values, their mean and sample standard deviation (ddof=1), for
- held-out VQA accuracy and caption attribute recall of every model (base, control, cycle, uncurated,
  oracle: stage 1.5 on the pool with its true labels, the ceiling),
- the paired per-seed differences cycle − base, cycle − control, cycle − uncurated, oracle − base (does
  stage 1.5 on this pool help at all) and cycle − oracle (the distance to the ceiling) (the same seed
  shares world and data, so the spread of the difference is the honest one, not the spread of
  each mean),
- curation quality against ground truth: kept vs best-before-threshold vs mean candidate, their
  difference (kept − mean, what selection adds) and the keep rate.
A value missing or undefined in a seed (None, NaN) is left out of that quantity's mean and shown as
"n/a"; the mean then says over how many seeds it was taken. The std of a single value is undefined
(None), not 0: one seed says nothing about the spread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sicog.errors import UserError

MODEL_ORDER = ("base", "control", "cycle", "uncurated", "oracle")
HELDOUT = (("vqa_accuracy", "VQA accuracy"), ("caption_attribute_recall", "caption attribute recall"))
DELTAS = (("cycle", "base"), ("cycle", "control"), ("cycle", "uncurated"), ("oracle", "base"), ("cycle", "oracle"))
CURATION = (
    ("vqa", "accuracy", "VQA pseudo-label accuracy"),
    ("caption", "attribute_recall", "caption pseudo-label attribute recall"),
)


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _get(metrics: Mapping, *path: str) -> float | None:
    node = metrics
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return _number(node)


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(values: Sequence[float | None]) -> dict:
    """Mean and sample std (ddof=1) of the defined values; None where undefined."""
    defined = np.array([v for v in values if v is not None], dtype=float)
    n = int(defined.size)
    return {
        "values": list(values),
        "n": n,
        "mean": float(defined.mean()) if n else None,
        "std": float(defined.std(ddof=1)) if n > 1 else None,
    }


def _row(group: str, key: str, label: str, values: list[float | None]) -> dict:
    return {"group": group, "key": key, "label": label, **summarize(values)}


def evidence_table(per_seed: Sequence[Mapping]) -> dict:
    """Per-seed metrics -> {"n_runs", "seeds", "steps", "rows": [{group, key, label, values, n, mean, std}]}."""
    if not per_seed:
        raise UserError("evidence_table needs the metrics of at least one seed")
    present = {m for metrics in per_seed for m in (metrics.get("heldout") or {})}
    models = [m for m in MODEL_ORDER if m in present] + sorted(present - set(MODEL_ORDER))
    rows = []
    for metric, name in HELDOUT:
        for model in models:
            values = [_get(m, "heldout", model, metric) for m in per_seed]
            rows.append(_row("heldout", f"heldout.{model}.{metric}", f"{model}: {name}", values))
        for a, b in DELTAS:
            if a in present and b in present:
                values = [_diff(_get(m, "heldout", a, metric), _get(m, "heldout", b, metric)) for m in per_seed]
                rows.append(_row("heldout", f"heldout.{a}_minus_{b}.{metric}", f"{a} − {b}: {name}", values))
    for task, measure, name in CURATION:
        kept = [_get(m, "curation", task, f"kept_{measure}") for m in per_seed]
        selected = [_get(m, "curation", task, f"selected_{measure}") for m in per_seed]
        mean = [_get(m, "curation", task, f"mean_candidate_{measure}") for m in per_seed]
        keep_rate = [_ratio(_get(m, "curation", task, "kept"), _get(m, "curation", task, "total")) for m in per_seed]
        prefix = f"curation.{task}"
        rows += [
            _row("curation", f"{prefix}.kept_{measure}", f"{name}: kept", kept),
            _row("curation", f"{prefix}.selected_{measure}", f"{name}: best before threshold", selected),
            _row("curation", f"{prefix}.mean_candidate_{measure}", f"{name}: mean candidate", mean),
            _row("curation", f"{prefix}.kept_minus_mean_{measure}", f"{name}: kept − mean candidate", [_diff(k, c) for k, c in zip(kept, mean)]),
            _row("curation", f"{prefix}.keep_rate", f"{task} keep rate", keep_rate),
        ]
    steps: dict[str, str] = {}
    for metrics in per_seed:
        for model, budget in (metrics.get("steps") or {}).items():
            steps.setdefault(model, str(budget))
    return {
        "n_runs": len(per_seed),
        "seeds": [(m.get("world") or {}).get("seed") for m in per_seed],
        "steps": steps,
        "rows": rows,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _run_labels(seeds: Sequence) -> list[str]:
    """ "seed N" when every run has a distinct seed, else "run i" (two runs must never share a column name)."""
    if all(s is not None for s in seeds) and len(set(map(str, seeds))) == len(seeds):
        return [f"seed {s}" for s in seeds]
    return [f"run {i + 1}" for i in range(len(seeds))]


def evidence_markdown(table: Mapping, command: str) -> str:
    """A README-ready Markdown block: the exact command, then one table per group."""
    labels = _run_labels(table["seeds"])
    n_runs = table["n_runs"]
    lines = [
        "Produced by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"{n_runs} run(s); mean ± sample standard deviation (ddof=1) across seeds, then each seed's value. "
        "n/a: undefined (missing value, or the spread of a single value). Differences are paired per seed.",
    ]
    titles = {"heldout": "Held-out evaluation", "curation": "Curation quality against ground truth"}
    for group, title in titles.items():
        rows = [r for r in table["rows"] if r["group"] == group]
        if not rows:
            continue
        lines += ["", f"**{title}**", "", "| Quantity | mean ± std | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for row in rows:
            summary = "n/a" if row["mean"] is None else f"{_fmt(row['mean'])} ± {_fmt(row['std'])}"
            if 0 < row["n"] < n_runs:
                summary += f" (n={row['n']})"
            cells = [_md_cell(row["label"]), summary] + [_fmt(v) for v in row["values"]]
            lines.append("| " + " | ".join(cells) + " |")
    if table.get("steps"):
        budgets = "; ".join(f"{_md_cell(model)}: {_md_cell(steps)}" for model, steps in table["steps"].items())
        lines += ["", f"Step budgets: {budgets}."]
    return "\n".join(lines) + "\n"


def write_evidence(out_dir: str | Path, per_seed: Sequence[Mapping], command: str) -> Path:
    """Write `out_dir/evidence.json` (the table and the command) and `out_dir/evidence.md`; return the .md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = evidence_table(per_seed)
    # allow_nan=False: undefined numbers are already None; a stray NaN would make the file invalid JSON.
    (out / "evidence.json").write_text(json.dumps({"command": command, **table}, indent=2, allow_nan=False) + "\n")
    path = out / "evidence.md"
    path.write_text(evidence_markdown(table, command), encoding="utf-8")
    return path
