"""`sicog data check`: read a whole catalog the way training would, without training.

Every record of every source is normalized and every image fetched and decoded (per batch, as in
the training pass), so what training would quarantine is counted here first. The report, per role
and source: rows read, usable records, image / text-only records, records with a system prompt,
quarantined rows by reason (with the first few rows as examples), image formats and size ranges.
"""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from sicog.data.catalog import ROLES, Catalog
from sicog.data.dataset import RoleData, SourceData
from sicog.errors import UserError

EXAMPLES = 3  # quarantine rows kept per source in the report


def check_source(data: RoleData, batch_size: int = 64) -> dict:
    """The figures of one single-source RoleData (see the module docstring)."""
    src = data.sources[0]
    stats = {"uri": src.source.uri, "format": None, "weight": src.source.weight, "rows": 0, "records": 0, "images": 0,
             "text_only": 0, "system": 0, "quarantined": 0, "quarantine_reasons": {}, "quarantine_examples": [],
             "image_formats": {}, "width": None, "height": None}  # fmt: skip
    reasons, formats = Counter(), Counter()
    widths, heights = [], []
    for batch in data.batches(batch_size):
        stats["rows"] += len(batch.records) + len(batch.quarantined)
        for rec, im in zip(batch.records, batch.images):
            stats["records"] += 1
            stats["system"] += "system" in rec
            if im is None:
                stats["text_only"] += 1
                continue
            stats["images"] += 1
            formats[im.format or "unknown"] += 1
            widths.append(im.width)
            heights.append(im.height)
        for row in batch.quarantined:
            reasons[row["reason"]] += 1
            if len(stats["quarantine_examples"]) < EXAMPLES:
                stats["quarantine_examples"].append(row)
    stats["format"] = src.fmt
    stats["quarantined"] = sum(reasons.values())
    stats["quarantine_reasons"] = dict(reasons.most_common())
    stats["image_formats"] = dict(formats.most_common())
    if widths:
        stats["width"], stats["height"] = [min(widths), max(widths)], [min(heights), max(heights)]
    return stats


def check_catalog(catalog: Catalog, roles: list[str] | None = None, batch_size: int = 64) -> dict:
    """{"roles": {role: {source name: figures}}, "totals": {records, quarantined}}; UserError when the
    catalog names no sources or a source cannot be opened at all (missing file, not an array, ...)."""
    roles = roles or catalog.roles()
    if not any(catalog.sources(r) for r in roles):  # sources() names the valid roles for an unknown one
        raise UserError("catalog: no sources" + (f" for {', '.join(roles)}" if roles else "") + f" (roles: {', '.join(ROLES)})")
    report = {"roles": {}, "totals": {"records": 0, "quarantined": 0}}
    for role in roles:
        report["roles"][role] = {}
        for source in catalog.sources(role):
            stats = check_source(RoleData(role, [SourceData(source, role)]), batch_size)
            report["roles"][role][source.name] = stats
            report["totals"]["records"] += stats["records"]
            report["totals"]["quarantined"] += stats["quarantined"]
    return report


def _range(values: list[int] | None) -> str:
    return "" if values is None else (f"{values[0]}" if values[0] == values[1] else f"{values[0]}-{values[1]}")


def render_report(report: dict) -> Table:
    """The report as one rich table: a row per role and source."""
    table = Table(title="sicog data check", show_lines=False)
    for name, justify in (("role", "left"), ("source", "left"), ("format", "left"), ("records", "right"), ("images", "right"),
                          ("text-only", "right"), ("system", "right"), ("quarantined", "right"), ("reasons", "left"),
                          ("image formats", "left"), ("size (w x h)", "right")):  # fmt: skip
        table.add_column(name, justify=justify)
    for role, sources in report["roles"].items():
        for name, s in sources.items():
            reasons = ", ".join(f"{r}: {n}" for r, n in s["quarantine_reasons"].items())
            formats = ", ".join(f"{f}: {n}" for f, n in s["image_formats"].items())
            table.add_row(role, name, s["format"], f"{s['records']:,}", f"{s['images']:,}", f"{s['text_only']:,}", f"{s['system']:,}",
                          f"{s['quarantined']:,}", reasons, formats,
                          f"{_range(s['width'])} x {_range(s['height'])}" if s["width"] else "")  # fmt: skip
    totals = report["totals"]
    table.caption = f"{totals['records']:,} usable records, {totals['quarantined']:,} quarantined"
    return table
