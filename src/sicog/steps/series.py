"""The series step: where a cycle starts, and the seal that makes a finished cycle a starting point.

`start_cycle` — Inputs: the config, the series folder (may be empty), the run's folder (may be empty)
and the run id. Output: the config every later step uses (in a series: the newest promoted cycle's
model as the foundation model, cycle number + 1, the gate's 'previous' reference) and the run's folder
(in a series, unless given: SERIES/cycles/<UTC time>-<run id>). Resolved at run time, so the runs of
a schedule chain up.
`seal_cycle` — Inputs: the cycle's metrics (with the promotion decision), its models and data.
Output: `lineage.json` in the run's folder, the last file a successful cycle writes.
Paper: App. G (recurring cycles: each cycle's model is the next one's foundation model).
"""

from __future__ import annotations

from sicog import lineage
from sicog.steps._io import as_config


def start_cycle(config: dict, series_uri: str, run_uri: str, run_id: str) -> tuple[dict, str]:
    """(config, run folder) of this run; outside a series both come back as given."""
    return lineage.start_cycle(config, series_uri, run_uri, run_id)


def seal_cycle(config, run_uri: str, run_id: str, models: dict[str, str], inputs: dict[str, str], metrics: dict) -> dict:
    """Write lineage.json at `run_uri` (URIs under it are kept relative, so a cycle folder can move)."""
    return lineage.write_lineage(as_config(config), run_uri, run_id, models, inputs, metrics)
