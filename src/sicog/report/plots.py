"""Report figures as PNG bytes.

Each function returns the bytes of one small PNG so that the HTML report can embed it inline and the
report stays a single self-contained file. The Agg backend is selected before pyplot is imported:
reports are written on headless machines (CI, pipeline pods), where an interactive backend would fail.

Figures are built with the object API (`Figure`, not global pyplot state) and closed after saving, so
repeated reports in one process do not accumulate memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 100
PANEL_W, PANEL_H = 4.0, 3.0  # inches per panel: 400 x 300 px at DPI 100
MAX_COLS = 3
TASK_ORDER = ("caption", "vqa", "text")
STAGE_ORDER = ("warmup", "align", "pretrain", "instruct", "dpo")  # the order a cycle runs them


def _finite(values: Sequence | None) -> np.ndarray:
    """Numbers that can be drawn: None and NaN (undefined scores) are left out, not imputed."""
    out = [float(v) for v in (values or []) if v is not None and math.isfinite(float(v))]
    return np.asarray(out, dtype=float)


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ordered(keys) -> list[str]:
    """Known tasks in pipeline order first, anything else after, alphabetically."""
    keys = list(keys)
    return [k for k in TASK_ORDER if k in keys] + sorted(k for k in keys if k not in TASK_ORDER)


def _figure(n_panels: int) -> tuple[Figure, list]:
    """A grid of at most MAX_COLS panels per row, so a wide figure still reads on a laptop screen."""
    n = max(n_panels, 1)
    cols = min(n, MAX_COLS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(PANEL_W * cols, PANEL_H * rows), dpi=DPI, layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_axis_off()  # unused cells of the last row
    return fig, axes[:n]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()
    return buf.getvalue()


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def score_histograms(scores: Mapping[str, Mapping[str, Sequence]], thresholds: Mapping[str, float | None]) -> bytes:
    """One panel per task: self-consistency scores of all candidates vs the best one per instance.

    Input: `scores[task] = {"best": [...], "all": [...]}`; `thresholds[task]` is the keep threshold
    (None for top-K tasks such as text-only) and `thresholds["conversation"]` the CoD conversation
    threshold, drawn on the caption panel. The bins cover the data and every drawn threshold, so a
    threshold outside the data is still visible (it then keeps everything or nothing).
    """
    tasks = _ordered(scores)
    fig, axes = _figure(len(tasks))
    if not tasks:
        _empty(axes[0], "no scores")
        return _png(fig)
    for ax, task in zip(axes, tasks):
        best = _finite(scores[task].get("best"))
        every = _finite(scores[task].get("all"))
        lines = []
        keep = _number(thresholds.get(task))
        if keep is not None:
            lines.append((keep, "threshold", "tab:red", "-"))
        conv = _number(thresholds.get("conversation")) if task == "caption" else None
        if conv is not None:
            lines.append((conv, "conversation", "tab:purple", "--"))
        points = np.concatenate([best, every, [x for x, *_ in lines]])
        if points.size == 0:
            _empty(ax, "no scores")
            ax.set_title(task)
            continue
        lo, hi = float(points.min()), float(points.max())
        pad = max(0.02 * (hi - lo), 0.01)
        bins = np.linspace(lo - pad, hi + pad, 31)
        if every.size:
            ax.hist(every, bins=bins, color="0.75", label=f"all candidates (n={every.size})")
        if best.size:
            ax.hist(best, bins=bins, histtype="step", linewidth=1.5, color="tab:blue", label=f"best per instance (n={best.size})")
        for x, name, color, style in lines:
            ax.axvline(x, color=color, linestyle=style, linewidth=1.2, label=f"{name} {x:.2f}")
        ax.set_title(task + ("" if keep is not None else " (top-K, no threshold)"))
        ax.set_xlabel("self-consistency score")
        ax.set_ylabel("count")
        ax.legend(fontsize="x-small", loc="upper left")
    return _png(fig)


def precision_keep_curve(curation: Mapping[str, Mapping], thresholds: Mapping[str, float | None] | None = None) -> bytes:
    """Per task with a sweep: keep rate and precision of the kept pseudo-labels against the threshold.

    Input: `curation[task]["sweep"] = [{"threshold", "keep_rate", "precision"}, ...]`; precision is
    the ground-truth quality of what that threshold would keep (VQA accuracy, caption attribute
    recall) and is None where nothing is kept, which leaves a gap in its line. `thresholds[task]`,
    when given, marks the configured threshold. This is the trade-off a user tunes the threshold on.
    """
    thresholds = thresholds or {}
    tasks = [t for t in _ordered(curation) if isinstance(curation[t], Mapping) and curation[t].get("sweep")]
    fig, axes = _figure(len(tasks))
    if not tasks:
        _empty(axes[0], "no threshold sweep")
        return _png(fig)
    for ax, task in zip(axes, tasks):
        rows = sorted(
            (r for r in curation[task]["sweep"] if _number(r.get("threshold")) is not None),
            key=lambda r: float(r["threshold"]),
        )
        x = np.array([float(r["threshold"]) for r in rows])
        # None -> NaN: matplotlib breaks the line there, so an undefined point is a gap, not a zero.
        keep = np.array([r.get("keep_rate") for r in rows], dtype=float)
        prec = np.array([r.get("precision") for r in rows], dtype=float)
        ax.plot(x, keep, marker="o", markersize=3, color="tab:gray", label="keep rate")
        ax.plot(x, prec, marker="o", markersize=3, color="tab:green", label="precision of kept")
        configured = _number(thresholds.get(task))
        if configured is not None:
            ax.axvline(configured, color="tab:red", linewidth=1.2, label=f"configured {configured:.2f}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(task)
        ax.set_xlabel("threshold")
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="lower left")
    return _png(fig)


def loss_curves(losses: Mapping[str, Sequence[Sequence[float]]]) -> bytes:
    """Training loss per run, one panel per stage so that models trained on the same stage overlay.

    Input: `losses["<model>/<stage>"] = [[step, loss], ...]` (e.g. "cycle/pretrain" and
    "control/pretrain" share the "pretrain" panel: the compute-matched comparison is read at a
    glance). A name without "/" gets its own panel. The y axis turns logarithmic when a panel's
    positive losses span more than 20x, where a linear axis would flatten the tail.
    """
    panels: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name in sorted(losses):
        model, _, stage = name.rpartition("/")
        pts = np.array([(float(s), float(v)) for s, v in losses[name] if v is not None and math.isfinite(float(v))], dtype=float).reshape(-1, 2)
        panels.setdefault(stage, []).append((model or stage, pts))
    stages = [s for s in STAGE_ORDER if s in panels] + sorted(s for s in panels if s not in STAGE_ORDER)
    # One colour per model across all panels, so "cycle" is the same line everywhere.
    models = sorted({model for runs in panels.values() for model, _ in runs})
    colors = {model: f"C{i % 10}" for i, model in enumerate(models)}
    fig, axes = _figure(len(stages))
    if not stages:
        _empty(axes[0], "no loss curves")
        return _png(fig)
    for ax, stage in zip(axes, stages):
        runs = panels[stage]
        values = np.concatenate([pts[:, 1] for _, pts in runs])
        for model, pts in runs:
            if len(pts):
                ax.plot(pts[:, 0], pts[:, 1], linewidth=1.0, color=colors[model], label=model)
        if values.size and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return _png(fig)
