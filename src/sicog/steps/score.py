"""The score step (step 3a): self-consistency scores and the keep decision per instance, all tasks.

Input: candidates of each task (folders holding candidates.jsonl, or candidates JSONL files). Output:
`scored.jsonl` (one row per instance: id, scores in candidate index order, best, kept) and
`rejected.jsonl` (every instance not kept, with its scores and reason): the folder `curate` reads.
Figures per task: instances, kept, malformed candidates, similarity and threshold.
Paper: Sec. 3.3 (each candidate's mean cosine similarity to the other candidates of its instance;
keep the best if it reaches the threshold; text-only: top-K by score).

With cluster.pushgateway set, the per-task instance and kept counts are also pushed to that
Prometheus Pushgateway (`push_counts`), for the chart's Grafana dashboard.
"""

from __future__ import annotations

import logging

from sicog import logs, store
from sicog.errors import UserError
from sicog.records import read_jsonl, write_jsonl
from sicog.steps._io import StepIO, as_config, open_step

# What `score` writes in its output folder and `curate` reads from each scored folder.
SCORED_FILE, REJECTED_FILE = "scored.jsonl", "rejected.jsonl"
PUSH_JOB = "sicog-score"  # the Pushgateway job of push_counts
log = logging.getLogger(__name__)


def scored_files(uri: str) -> tuple[str, str]:
    """(scored rows, rejected rows) of a score output at `uri`, the one naming rule that `sicog score
    --out` and `sicog curate --scored` share: a folder holds scored.jsonl and rejected.jsonl; a name
    ending in .jsonl is the scored rows themselves, with <stem>.rejected.jsonl beside it."""
    uri = str(uri).rstrip("/")
    if uri.endswith(".jsonl"):
        return uri, uri[: -len(".jsonl")] + ".rejected.jsonl"
    return store.join(uri, SCORED_FILE), store.join(uri, REJECTED_FILE)


def _embedder(cfg, address: str):
    """The in-process Embedder, or a client of the scorer service at `address`: the service is used for
    embeddings only (its Embed RPC), so the scores are computed by the same code on the same vectors."""
    if not address:
        from sicog.curate.embedder import Embedder

        return Embedder(cfg.curate.embedder, batch_size=cfg.curate.embed_batch_size, trust_remote_code=cfg.curate.trust_remote_code)
    from sicog.scorer.client import ScorerClient

    client = ScorerClient(address)
    if client.model_id != cfg.curate.embedder:  # thresholds are only meaningful for the embedder they were set for
        raise UserError(f"scorer {address} serves {client.model_id!r}, but curate.embedder is {cfg.curate.embedder!r}")
    return client


def score(config, io: StepIO, scorer: str | None = None) -> dict:
    """io.inputs: {"candidates": [folders or JSONL files]}; tasks may be mixed, each scored with its own
    section of `curate`, one embedder for all. `scorer`: HOST:PORT of a scorer service (None: the
    config's curate.scorer; empty: in-process)."""
    from sicog.curate.select import score_instances, select_instances

    cfg = as_config(config)
    with open_step(io, cycle=cfg.cycle) as step:
        paths = [p / "candidates.jsonl" if p.is_dir() else p for p in step.inputs["candidates"]]
        by_task: dict[str, list[dict]] = {}
        for path in paths:
            for row in read_jsonl(path):
                if row.get("text") is not None:  # sampling failures are already written with their reasons
                    by_task.setdefault(row["task"], []).append(row)
        scored_all, rejected_all, embedder = [], [], None
        for task, rows in sorted(by_task.items()):
            task_cfg = getattr(cfg.curate, task)
            if embedder is None and task_cfg.similarity != "exact":
                embedder = _embedder(cfg, cfg.curate.scorer if scorer is None else scorer)
            scored, unscorable = score_instances(rows, task_cfg.similarity, embedder, task_cfg.short_answer_words)
            kept, rejected = select_instances(scored, task, task_cfg.threshold, cfg.curate.text_top_k if task == "text" else None)
            scored_all += scored
            rejected_all += unscorable + rejected
            step.figures[task] = {
                "instances": len(scored) + len(unscorable),
                "kept": len(kept),
                "similarity": task_cfg.similarity,
                "threshold": task_cfg.threshold,
                "malformed": sum(len(r.get("malformed", [])) for r in scored + unscorable),
            }
        write_jsonl(step.out / SCORED_FILE, scored_all)
        write_jsonl(step.out / REJECTED_FILE, rejected_all)
    figures = {task: step.figures[task] for task in by_task}
    if cfg.cluster.pushgateway:
        push_counts(cfg.cluster.pushgateway, figures, run_id=logs.current()["run_id"], cycle=cfg.cycle)
    return figures


def push_counts(gateway: str, figures: dict, *, run_id: str, cycle: int, timeout_s: float = 10.0) -> None:
    """The per-task counts as gauges sicog_score_instances{task} and sicog_score_kept{task}, pushed to
    the Pushgateway at `gateway` as job sicog-score grouped by run_id and cycle (a retried task
    replaces its group). The push is best effort: a failure is one warning, never the step's."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    instances = Gauge("sicog_score_instances", "Instances scored in a cycle, per task.", ["task"], registry=registry)
    kept = Gauge("sicog_score_kept", "Instances whose best candidate was kept, per task.", ["task"], registry=registry)
    for task, f in figures.items():
        instances.labels(task).set(f["instances"])
        kept.labels(task).set(f["kept"])
    try:
        push_to_gateway(gateway, job=PUSH_JOB, registry=registry, grouping_key={"run_id": run_id or "local", "cycle": str(cycle)}, timeout=timeout_s)
    except OSError as exc:  # urllib's URLError / HTTPError, refused connections, timeouts
        log.warning("pushgateway %s: could not push the score counts (%s)", gateway, exc)
