"""metrics.json of one cycle: every figure the report, the README tables, the series and the gate read.

Assembled from what the cycle's steps left: the world's counts, eval.json (scores and each model's
lineage), curation.json and the merged timings of every step.
"""

from __future__ import annotations


def heldout_scores(evaluation: dict) -> dict:
    """The scores of one model's eval.json entry (held-out metrics and benchmarks, 0-1 or None), without
    counts and lineage: what metrics.json's `heldout`, KFP's metrics and the promotion gate read."""
    return {
        key: value
        for key, value in evaluation.items()
        if key not in ("lineage", "errors") and not key.endswith("_n") and (value is None or isinstance(value, float))
    }


def _budget(lineage: list[dict]) -> str:
    return " + ".join(f"{e['stage']} {e['steps']} ({e['data']})" for e in lineage)


def _final_loss(lineage: list[dict]) -> float | None:
    """The training loss of a model's last logged step: the most environment-sensitive figure of a run."""
    return lineage[-1]["loss_history"][-1][1] if lineage and lineage[-1].get("loss_history") else None


def cycle_metrics(cfg, counts: dict, evals: dict, curation: dict, timings: dict) -> dict:
    """metrics.json without the promotion decision (the gate reads `heldout` from it)."""
    return {
        "world": {"seed": cfg.world.seed, **counts},
        "cycle": cfg.cycle,
        "seed": cfg.seed,
        "similarity": {t: getattr(cfg.curate, t).similarity for t in ("caption", "vqa", "text")},
        "thresholds": {
            "caption": cfg.curate.caption.threshold,
            "vqa": cfg.curate.vqa.threshold,
            "text": None,
            "text_top_k": cfg.curate.text_top_k,
            "conversation": cfg.curate.conversation_threshold,
        },
        "heldout": {name: heldout_scores(ev) for name, ev in evals.items()},
        "steps": {name: _budget(ev["lineage"]) for name, ev in evals.items()},
        "optimizer_steps": {name: sum(entry["steps"] for entry in ev["lineage"]) for name, ev in evals.items()},
        "final_loss": {name: _final_loss(ev["lineage"]) for name, ev in evals.items()},
        "curation": curation["quality"],
        "counts": {
            "quarantined": {step: t["quarantined"] for step, t in timings.items() if t.get("quarantined")},
            "rejected": curation["rejected"],
            "sample_failures": sum(t.get("failures", 0) for t in timings.values()),
            "malformed": {task: q.get("malformed", 0) for task, q in curation["quality"].items()},
        },
        "timings_s": {step: t["seconds"] for step, t in timings.items()},
        "peak_rss_mb": max((t["peak_rss_mb"] for t in timings.values()), default=None),
        "peak_rss_mb_by_step": {step: t["peak_rss_mb"] for step, t in timings.items()},
    }


def stage_losses(evals: dict, warmups: dict[str, list[dict]]) -> dict[str, list]:
    """{"<model>/<stage>": loss history}: the report overlays models stage by stage; `warmups` are the
    step-1 models' lineages (their last entry is the warm-up)."""
    losses: dict = {}
    for name, ev in evals.items():
        for entry in ev["lineage"]:
            losses[f"{name}/{entry['stage']}"] = entry.get("loss_history", [])
    for name, lineage in warmups.items():
        for entry in lineage[-1:]:
            losses[f"{name}/{entry['stage']}"] = entry.get("loss_history", [])
    return losses
