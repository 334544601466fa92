"""The report step: metrics.json and report.html of one cycle, with its promotion decision.

Inputs: the world (its counts), the curate step's folder (curation.json), the evaluate step's folder
(eval.json) and the step-1 models (their warm-up loss curves). Output: `metrics.json` (held-out scores,
step budgets, final losses, curation quality, counts, timings, peak RSS, the promotion decision) and
`report.html` (tables and plots). Figures: the promotion decision.
Paper: Sec. 4 (Tables 1-5: what a cycle gained, against its base and a compute-matched control).
"""

from __future__ import annotations

import json

from sicog.lineage import promotion, read_previous
from sicog.records import write_json
from sicog.report import write_report
from sicog.report.metrics import cycle_metrics, stage_losses
from sicog.steps._io import StepIO, as_config, open_step, read_json


def report(config, io: StepIO) -> dict:
    """io.inputs: {"world", "curation", "evaluation", "warmups": {name: model URI}}. Returns metrics.json."""
    cfg = as_config(config)
    with open_step(io, cycle=cfg.cycle) as step:
        evals = json.loads((step.input("evaluation") / "eval.json").read_text())
        curation = json.loads((step.input("curation") / "curation.json").read_text())
        timings: dict = {}
        for folder in (step.input("curation"), step.input("evaluation"), *step.inputs["warmups"].values()):
            timings.update(read_json(folder / "timings.json", {}))
        counts = read_json(step.input("world") / "manifest.json", {}).get("counts", {})
        metrics = cycle_metrics(cfg, counts, evals, curation, timings)
        metrics["promotion"] = promotion(cfg.promote, metrics["heldout"], read_previous(cfg.promote))
        write_json(step.out / "metrics.json", metrics)
        warmups = {name: read_json(folder / "lineage.json", []) for name, folder in step.inputs["warmups"].items()}
        write_report(step.out, metrics, curation["scores"], stage_losses(evals, warmups))
        step.figures["promotion"] = metrics["promotion"]["reason"]
    return metrics
