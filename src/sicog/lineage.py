"""Cycles in a series: where each cycle starts, what it was made of, and whether it may start the next.

A *series* is a store folder (an s3:// prefix, or a local folder) that recurring runs share. Each run
is one cycle in its own folder, SERIES/cycles/<UTC time>-<run id>/, holding the run's outputs (its
run_uri) and, written last by the report step, `lineage.json`: the cycle's number, the model it
started from, its inputs, its models, its held-out scores, its data counts, its config, the code
version and the promotion decision. A cycle without lineage.json did not finish and is never a
starting point.

The promotion gate (`promotion`, configured by `promote`): a cycle's model becomes the series'
starting point only if its held-out scores do not regress beyond a tolerance against the previous
promoted cycle and against its own base model. A refused cycle stays in the series with its reason and
is skipped as a starting point, so one bad cycle cannot drag the series down.

A scheduled run has fixed parameters, so the starting point is resolved inside the run, by its first
step (`start_cycle`): the newest promoted successful cycle's final model becomes `model.start`, its
lineage becomes the 'previous' reference of the gate (`promote.previous`) and the cycle number is its
number + 1. The cycle number therefore counts the cycles behind the model, not the runs: a cycle that
follows a refused one has the refused one's number again.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from sicog import __version__, store
from sicog.config import PromoteConfig, SicogConfig, parameter_dict, validate_config

LINEAGE = "lineage.json"
CYCLES = "cycles"
# Float slack of the tolerance check: a drop of exactly the tolerance passes whatever the rounding.
SLACK = 1e-9


def read_series(series_uri: str) -> list[tuple[str, dict]]:
    """Every sealed cycle of the series as (lineage.json URI, its record), oldest first (by finish time).
    Reads one listing of the cycle folders and their lineage files, never the cycles' contents."""
    cycles_uri = store.join(series_uri, CYCLES)
    found = []
    for folder in store.list_folders(cycles_uri):
        uri = store.join(cycles_uri, folder, LINEAGE)
        if store.exists(uri):
            found.append((uri, json.loads(store.read_text(uri))))
    return sorted(found, key=lambda item: item[1].get("finished_at", 0.0))


def is_start(record: dict) -> bool:
    """A cycle that may start the next one: it succeeded and the gate promoted it. Lineage sealed
    before the gate existed has no `promoted` and counts as promoted, as it did then."""
    return record.get("status") == "succeeded" and record.get("promoted", True) is True


def latest_cycle(series_uri: str) -> tuple[str, dict] | None:
    """The newest promoted successful cycle in the series (by finish time) as (lineage.json URI, its
    record), or None: the URI is what the next cycle's gate reads as its 'previous' reference."""
    starts = [item for item in read_series(series_uri) if is_start(item[1])]
    return starts[-1] if starts else None


def cycle_folder(series_uri: str, run_id: str) -> str:
    """A new cycle's folder in its series: SERIES/cycles/<UTC time>-<run id>."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return store.join(series_uri, CYCLES, f"{stamp}-{run_id[:8]}")


def relative_uri(uri: str, folder: str) -> str:
    """`uri` relative to `folder` when it lies under it (so a cycle's folder can be moved or published
    whole), else as it is."""
    prefix = str(folder).rstrip("/") + "/"
    return str(uri)[len(prefix) :] if str(uri).startswith(prefix) else str(uri)


def resolve_uri(uri: str | None, lineage_uri: str) -> str | None:
    """A URI of a lineage record: absolute (s3://..., file://..., /...) as it is, else relative to the
    folder lineage.json is in."""
    if not uri or store.is_remote(uri) or uri.startswith(("/", "file://")):
        return uri
    return store.join(lineage_uri.rsplit("/", 1)[0], uri)


def start_cycle(config: dict, series_uri: str, run_uri: str, run_id: str) -> tuple[dict, str]:
    """This run's config and folder. Outside a series both come back unchanged. In a series the
    config starts from the newest promoted cycle's model as its foundation model (cycle number + 1;
    stages 1 and 2 are not re-run, see ModelConfig.foundation), is gated against that
    cycle's scores (`promote.previous`) and, unless given, the run's folder is a new folder under
    SERIES/cycles/."""
    if not series_uri:
        return config, run_uri
    cfg = validate_config(config)
    newest = latest_cycle(series_uri)
    if newest is not None:
        uri, previous = newest
        cfg.cycle = previous["cycle"] + 1
        cfg.model.start = resolve_uri(previous["models"]["cycle"], uri)
        cfg.model.foundation = True  # paper App. G: the previous cycle's model is this cycle's foundation model
        cfg.promote.previous = uri
        if cfg.train.carry_curated:
            cfg.train.earlier_curated = [
                resolve_uri(record["inputs"]["curated"], lineage_uri)
                for lineage_uri, record in read_series(series_uri)
                if is_start(record) and record.get("inputs", {}).get("curated")
            ]
    return parameter_dict(cfg), run_uri or cycle_folder(series_uri, run_id)


# --- the promotion gate ---------------------------------------------------------------------------


def _score(scores: dict | None, metric: str) -> float | None:
    """A measured score, or None when it is missing, null, NaN or not a number."""
    value = (scores or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _check(metric: str, value: float | None, against: str, label: str, reference: float | None, tolerance: float) -> dict:
    """One metric against one reference: passed True / False, or None (skipped) when the reference has
    no value for it. `label` names the reference in the reason (e.g. "previous cycle 3")."""
    if value is None and reference is None:
        passed, reason = None, f"{metric}: measured by neither the cycle model nor {label}, skipped"
    elif value is None:
        passed, reason = False, f"{metric}: not measured for the cycle model, so it cannot pass against {label}"
    elif reference is None:
        passed, reason = None, f"{metric} {value:.4f}: {label} has no value, skipped"
    else:
        passed = value - reference >= -tolerance - SLACK
        verdict = "within" if passed else "regresses beyond"
        reason = f"{metric} {value:.4f} vs {label} {reference:.4f} ({value - reference:+.4f}): {verdict} tolerance {tolerance:.4f}"
    return {"metric": metric, "against": against, "value": value, "reference": reference, "tolerance": tolerance, "passed": passed, "reason": reason}


def promotion(gate: PromoteConfig, heldout: dict, previous: dict | None) -> dict:
    """Whether this cycle's model may start the next cycle of its series.

    `heldout` is metrics.json's `heldout` ({model: {metric: score}}); `previous` the lineage record of
    the previous promoted cycle (None: the series' first cycle, or no series). Each gated metric of the
    cycle model is checked against each reference of `gate.against`: previous = the previous cycle's
    model, base = this cycle's base model. Only what both sides measured is compared: a check whose
    reference has no value (the series' first cycle, a benchmark added since the previous cycle, or a
    metric that neither side measured, such as the caption score of a user catalog whose held-out rows
    have no captions) is skipped and says so. Refused when any check regresses beyond the tolerance, when
    the cycle model lacks a score its reference has, or when it measured nothing at all. Returns {promoted, reason, tolerance, previous,
    compared, checks}: the reason names every metric, value, reference and the tolerance."""
    cycle = heldout.get("cycle") or {}
    metrics = gate.metrics or list(cycle)
    references = {"previous": (previous or {}).get("heldout", {}).get("cycle"), "base": heldout.get("base")}
    labels = {"previous": f"previous cycle {previous['cycle']}" if previous else "the previous promoted cycle (none yet)", "base": "base"}
    checks = [
        _check(metric, _score(cycle, metric), against, labels[against], _score(references[against], metric), gate.tolerance)
        for against in gate.against
        for metric in metrics
    ]
    promoted = all(c["passed"] is not False for c in checks)
    compared = sorted({c["metric"] for c in checks if c["passed"] is not None})
    reason = "; ".join(c["reason"] for c in checks) or "no gate configured (promote.against is empty)"
    if gate.against and all(_score(cycle, metric) is None for metric in metrics):
        promoted, reason = False, "the cycle model has no held-out metric to gate on"
    elif gate.against:
        reason = f"compared {', '.join(compared) or 'nothing'}: {reason}"
    return {
        "promoted": promoted,
        "reason": f"{'promoted' if promoted else 'refused'}: {reason}",
        "tolerance": gate.tolerance,
        "previous": {"cycle": previous["cycle"], "work_uri": previous.get("work_uri"), "lineage": gate.previous} if previous else None,
        "compared": compared,
        "checks": checks,
    }


def read_previous(gate: PromoteConfig) -> dict | None:
    """The lineage record of the gate's 'previous' reference (`promote.previous`), or None when unset."""
    return json.loads(store.read_text(gate.previous)) if gate.previous else None


def code_version() -> dict:
    """The sicog release and the commit: SICOG_GIT_SHA (set in the images at build time), else the
    source checkout's HEAD when sicog runs from one."""
    sha = os.environ.get("SICOG_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return {"sicog": __version__, "git_sha": sha or "unknown"}


def data_summary(metrics: dict) -> dict:
    """What the cycle's data were made of, for the series report: curated kept / scored instances and
    keep rate per task, quarantined and rejected counts (from metrics.json)."""
    curated = {}
    for task, stats in (metrics.get("curation") or {}).items():
        kept, total = stats.get("kept"), stats.get("total")
        curated[task] = {"kept": kept, "total": total, "keep_rate": kept / total if kept is not None and total else None}
    counts = metrics.get("counts") or {}
    return {"curated": curated, "quarantined": sum((counts.get("quarantined") or {}).values()), "rejected": sum((counts.get("rejected") or {}).values())}


def write_lineage(config: SicogConfig, run_uri: str, run_id: str, models: dict[str, str], inputs: dict[str, str], metrics: dict) -> dict:
    """Seal the cycle: lineage.json in the run's folder, the last file a successful cycle writes. `metrics`
    is the report step's metrics.json, whose `promotion` decides whether the cycle may start the next one.
    URIs under the run's folder are recorded relative to it (see resolve_uri)."""
    decision = metrics["promotion"]
    record = {
        "cycle": config.cycle,
        "status": "succeeded",
        "promoted": decision["promoted"],
        "promotion": decision,
        "run_id": run_id,
        "finished_at": time.time(),
        "finished_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "work_uri": run_uri,  # the run's folder (key kept from earlier releases, so older series still read)
        "started_from": config.model.start or None,  # None: a fresh model
        "models": {name: relative_uri(uri, run_uri) for name, uri in models.items()},
        "inputs": {name: relative_uri(uri, run_uri) for name, uri in inputs.items()},
        "heldout": metrics["heldout"],
        "data": data_summary(metrics),
        "steps": metrics.get("steps", {}),
        "optimizer_steps": metrics.get("optimizer_steps", {}),
        "config": config.model_dump(mode="json"),
        "code": code_version(),
    }
    store.write_text(store.join(run_uri, LINEAGE), json.dumps(record, indent=2))
    return record
