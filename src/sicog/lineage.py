"""Cycles in a series: where each cycle starts, and what it was made of.

A *series* is a store folder (an s3:// prefix, or a local folder) that recurring runs share. Each run
is one cycle in its own folder, SERIES/cycles/<UTC time>-<run id>/, holding every step's output (the
run's work_uri) and, written last by the report step, `lineage.json`: the cycle's number, the model it
started from, its inputs, its models, its config and the code version. A cycle without lineage.json
did not finish and is never a starting point.

A scheduled run has fixed parameters, so the starting point is resolved inside the run, by its first
step (`start_cycle`): the newest successful cycle's final model becomes `model.start` and the cycle
number goes up by one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from sicog import __version__, store
from sicog.config import SicogConfig, parameter_dict, validate_config

LINEAGE = "lineage.json"
CYCLES = "cycles"


def latest_cycle(series_uri: str) -> dict | None:
    """The lineage of the newest successful cycle in the series (by finish time), or None. Reads one
    listing of the cycle folders and their lineage files, never the cycles' contents."""
    cycles_uri = store.join(series_uri, CYCLES)
    found = []
    for folder in store.list_folders(cycles_uri):
        uri = store.join(cycles_uri, folder, LINEAGE)
        if store.exists(uri):
            record = json.loads(store.read_text(uri))
            if record.get("status") == "succeeded":
                found.append(record)
    return max(found, key=lambda r: r["finished_at"], default=None)


def start_cycle(config: dict, series_uri: str, work_uri: str, run_id: str) -> tuple[dict, str]:
    """This run's config and work_uri. Outside a series both come back unchanged. In a series the
    config starts from the last successful cycle's model (cycle number + 1) and, unless given, the
    work_uri is a new folder under SERIES/cycles/."""
    if not series_uri:
        return config, work_uri
    cfg = validate_config(config)
    previous = latest_cycle(series_uri)
    if previous is not None:
        cfg.cycle = previous["cycle"] + 1
        cfg.model.start = previous["models"]["cycle"]
    if not work_uri:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        work_uri = store.join(series_uri, CYCLES, f"{stamp}-{run_id[:8]}")
    return parameter_dict(cfg), work_uri


def code_version() -> dict:
    """The sicog release and the commit: SICOG_GIT_SHA (set in the images at build time), else the
    source checkout's HEAD when sicog runs from one."""
    sha = os.environ.get("SICOG_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                 text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return {"sicog": __version__, "git_sha": sha or "unknown"}


def write_lineage(config: SicogConfig, work_uri: str, run_id: str, models: dict[str, str], inputs: dict[str, str],
                  heldout: dict) -> dict:
    """Seal the cycle: lineage.json at work_uri, the last file a successful cycle writes."""
    record = {
        "cycle": config.cycle,
        "status": "succeeded",
        "run_id": run_id,
        "finished_at": time.time(),
        "finished_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "work_uri": work_uri,
        "started_from": config.model.start or None,  # None: a fresh model
        "models": models,
        "inputs": inputs,
        "heldout": heldout,
        "config": config.model_dump(mode="json"),
        "code": code_version(),
    }
    store.write_text(store.join(work_uri, LINEAGE), json.dumps(record, indent=2))
    return record
