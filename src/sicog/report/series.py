"""The series report: every cycle of a series side by side, read only from the cycles' lineage.json.

A series (sicog.lineage) keeps each cycle's lineage.json under SERIES/cycles/<folder>/: its held-out
scores per model, its data counts, its step budgets and the promotion decision. This module reads
those files (never a cycle's contents, so a series on S3 costs one listing and one small read per
cycle) and writes one table, as Markdown and CSV, and one PNG of the same figures over the runs:

- `series_rows(series_uri)`: one row per sealed cycle, oldest first; columns are the union over the
  cycles, so held-out metrics added later (new benchmarks) appear without a code change;
- `series_png(rows)`: scores, data counts, keep rates and optimizer steps over the runs, refused
  cycles marked;
- `write_series_report(series_uri, out_uri)`: series.md, series.csv and series.png under out_uri
  (local or s3://).

Runs are numbered in finish order. The cycle number is the model's (sicog.lineage): a cycle that
follows a refused one has the refused one's number again, so the run index is the x axis.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

from sicog import lineage, store
from sicog.errors import UserError
from sicog.report.plots import _empty, _figure, _number, _png

MODEL_ORDER = ("base", "cycle", "control", "uncurated", "oracle")
TASK_ORDER = ("caption", "vqa", "text")
NA = "n/a"
# Columns every row has (see _row): before the held-out scores, and after the data counts.
FRONT = ("run", "folder", "cycle", "finished", "status", "gate", "started from")
BACK = ("quarantined", "rejected", "cycle optimizer steps", "cycle step budget")


def _ordered(keys, order: Sequence[str]) -> list[str]:
    keys = list(dict.fromkeys(keys))
    return [k for k in order if k in keys] + [k for k in keys if k not in order]


def _folder(lineage_uri: str) -> str:
    """The cycle's folder name under SERIES/cycles/ (the parent of its lineage.json)."""
    return lineage_uri.rstrip("/").rsplit("/", 2)[-2]


def _decision(record: Mapping) -> str:
    """'promoted', 'refused (<metric> vs <reference>, ...)', or n/a for lineage sealed before the gate."""
    if "promoted" not in record:
        return NA
    if record["promoted"]:
        return "promoted"
    failed = [f"{c['metric']} vs {c['against']}" for c in record.get("promotion", {}).get("checks", []) if c.get("passed") is False]
    return f"refused ({', '.join(failed)})" if failed else "refused"


def _started_from(record: Mapping, folders_by_model: Mapping[str, str]) -> str:
    start = record.get("started_from")
    if not start:
        return "fresh"
    return folders_by_model.get(start, start)  # a model from outside the series: its URI


def _row(run: int, uri: str, record: Mapping, folders_by_model: Mapping[str, str]) -> dict:
    row = {
        "run": run,
        "folder": _folder(uri),
        "cycle": record.get("cycle"),
        "finished": record.get("finished_at_utc"),
        "status": record.get("status"),
        "gate": _decision(record),
        "started from": _started_from(record, folders_by_model),
    }
    heldout = record.get("heldout") or {}
    for model in _ordered(heldout, MODEL_ORDER):
        for metric, value in (heldout[model] or {}).items():
            row[f"{model} {metric}"] = value
    data = record.get("data") or {}
    curated = data.get("curated") or {}
    for task in _ordered(curated, TASK_ORDER):
        row[f"kept {task}"] = curated[task].get("kept")
    for task in _ordered(curated, TASK_ORDER):
        row[f"keep rate {task}"] = curated[task].get("keep_rate")
    row["quarantined"] = data.get("quarantined")
    row["rejected"] = data.get("rejected")
    row["cycle optimizer steps"] = (record.get("optimizer_steps") or {}).get("cycle")
    row["cycle step budget"] = (record.get("steps") or {}).get("cycle")
    return row


def series_rows(series_uri: str) -> list[dict]:
    """One row per sealed cycle of the series, oldest first. A series without any sealed cycle (or no
    such folder) is a UserError: there is nothing to report."""
    sealed = lineage.read_series(series_uri)
    if not sealed:
        raise UserError(f"no finished cycle in series {series_uri} (looked for {store.join(series_uri, lineage.CYCLES, '*', lineage.LINEAGE)})")
    folders_by_model = {lineage.resolve_uri((record.get("models") or {}).get("cycle"), uri): _folder(uri) for uri, record in sealed}
    return [_row(run, uri, record, folders_by_model) for run, (uri, record) in enumerate(sealed, start=1)]


def _model_rank(column: str) -> int:
    model = column.split(" ", 1)[0]
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def score_columns(rows: Sequence[Mapping]) -> list[str]:
    """The held-out score columns ('<model> <metric>') of any row, grouped by model: a metric that only
    later cycles measured (a new benchmark) sits with its model's other scores."""
    seen = list(dict.fromkeys(key for row in rows for key in row))
    scores = [c for c in seen if c not in FRONT + BACK and not c.startswith(("kept ", "keep rate "))]
    return sorted(scores, key=_model_rank)  # stable: first-seen order within a model


def columns(rows: Sequence[Mapping]) -> list[str]:
    """Every column of any row: the cycle, its scores, its data counts, its budget. Cycles sealed before
    a metric existed show n/a in its column."""
    seen = list(dict.fromkeys(key for row in rows for key in row))
    data = [c for c in seen if c.startswith("kept ")] + [c for c in seen if c.startswith("keep rate ")]
    return [c for c in FRONT if c in seen] + score_columns(rows) + data + [c for c in BACK if c in seen]


def fmt(value) -> str:
    """Numbers for a table: ints as they are, floats with 3 decimals, missing or undefined as n/a."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        number = _number(value)
        return NA if number is None else f"{number:.3f}"
    return NA if value is None else str(value)


def to_markdown(rows: Sequence[Mapping]) -> str:
    cols = columns(rows)
    cell = lambda value: fmt(value).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping]) -> str:
    """Full precision, empty cells for missing values: for spreadsheets and pandas."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: "" if row.get(c) is None else row.get(c) for c in columns(rows)} for row in rows)
    return buf.getvalue()


def rich_table(rows: Sequence[Mapping], title: str):
    """The same table for a terminal, transposed: one column per cycle, one row per figure (a series has
    a few cycles but some twenty figures, too many columns for a terminal)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("run", style="bold", no_wrap=True)
    for row in rows:
        table.add_column(str(row["run"]), overflow="fold")
    for col in columns(rows)[1:]:
        table.add_row(col, *(fmt(row.get(col)) for row in rows))
    return table


def _panel(ax, rows: Sequence[Mapping], keys: Sequence[str], title: str, refused: Sequence[int]) -> None:
    """Lines of `keys` over the runs (undefined points left out); refused runs shaded."""
    runs = [row["run"] for row in rows]
    drawn = False
    for key in keys:
        points = [(run, _number(row.get(key))) for run, row in zip(runs, rows)]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
            drawn = True
    if not drawn:
        _empty(ax, "no values")
    for run in refused:
        ax.axvspan(run - 0.4, run + 0.4, color="tab:red", alpha=0.12, lw=0)
    ax.set_title(title)
    ax.set_xticks(runs, [f"{row['run']}\n(c{row['cycle']})" for row in rows])
    ax.set_xlabel("run (cycle); red: refused")
    if drawn:
        ax.legend(fontsize=7)


def series_png(rows: Sequence[Mapping]) -> bytes:
    """Four panels over the runs: held-out scores of every model, curated kept per task and quarantined
    counts, keep rates per task, and the optimizer steps behind the cycle model (every stage of its
    lineage, so they add up along a series); refused runs shaded."""
    cols = columns(rows)
    refused = [row["run"] for row in rows if str(row.get("gate", "")).startswith("refused")]
    fig, axes = _figure(4)
    _panel(axes[0], rows, score_columns(rows), "held-out scores", refused)
    _panel(axes[1], rows, [c for c in cols if c.startswith("kept ")] + ["quarantined"], "data counts", refused)
    _panel(axes[2], rows, [c for c in cols if c.startswith("keep rate ")], "keep rates", refused)
    _panel(axes[3], rows, ["cycle optimizer steps"], "optimizer steps behind the cycle model", refused)
    return _png(fig)


def write_series_report(series_uri: str, out_uri: str) -> tuple[list[dict], dict[str, str]]:
    """(rows, {format: URI}) after writing series.md, series.csv and series.png under `out_uri`."""
    rows = series_rows(series_uri)
    paths = {name: store.join(out_uri, f"series.{name}") for name in ("md", "csv", "png")}
    store.write_text(paths["md"], f"Series {series_uri}: {len(rows)} cycle(s), oldest first.\n\n" + to_markdown(rows))
    store.write_text(paths["csv"], to_csv(rows))
    store.write_bytes(paths["png"], series_png(rows))
    return rows, paths
