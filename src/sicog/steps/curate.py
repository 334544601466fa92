"""The curate step (step 3b): curated training records from the kept instances, and curation quality.

Input: the world (the optional `truth` role: curation figures against ground truth) and the scored
folders of the score step. Output: `curated.jsonl` (stage-1.5 data with provenance; high-consistency
CoD winners as 5-turn conversations), `uncurated.jsonl` (the ablation, same size), `oracle.jsonl` (the
oracle ablation: this cycle's pool with its true labels, where the world gives truth),
`rejected.jsonl` and `curation.json` (quality per task, score histograms, rejected counts). Figures:
curated, uncurated, oracle and rejected counts; per task kept / instances / malformed.
Paper: Sec. 3.3 (keep the most consistent candidate; CoD winners above the conversation threshold
become 5-turn conversations; text-only top-K over the whole pool) and Table 5 (curation matters).
"""

from __future__ import annotations

import random
from collections import Counter

from sicog.data import read_role, run_catalog
from sicog.errors import UserError
from sicog.records import ScoredRow, read_jsonl, write_json, write_jsonl
from sicog.steps._io import StepIO, as_config, open_step
from sicog.steps.sample import POOLS, cycle_pool
from sicog.steps.score import REJECTED_FILE, SCORED_FILE

TASKS = ("caption", "vqa", "text")  # every task is reported, also when nothing could be scored


def _scored_rows(folder) -> list[dict]:
    rows = []
    for n, row in enumerate(read_jsonl(folder / SCORED_FILE), start=1):
        try:
            ScoredRow.from_row(row)
        except ValueError as exc:
            raise UserError(f"{folder / SCORED_FILE} line {n}: {exc}") from None
        rows.append(row)
    return rows


def curate(config, io: StepIO) -> dict:
    """io.inputs: {"world", "scored": [folders from the score step]}. Returns the quality per task."""
    from sicog.curate.ablation import oracle_records, uncurated_records
    from sicog.curate.select import select_instances, to_curated
    from sicog.evaluate.metrics import curation_quality

    cfg = as_config(config)
    with open_step(io, cycle=cfg.cycle) as step:
        catalog = run_catalog(step.input("world"))
        truth = {row["id"]: row for row in read_role(catalog, "truth")[0]}  # optional
        by_task: dict[str, list[dict]] = {}
        rejected: list[dict] = []
        for folder in step.inputs["scored"]:
            for row in _scored_rows(folder):
                by_task.setdefault(row["task"], []).append(row)
            rejected += list(read_jsonl(folder / REJECTED_FILE))
        curated, uncurated, oracle, quality, scores = [], [], [], {}, {}
        rng = random.Random(cfg.seed)
        for task in TASKS:
            rows = by_task.get(task, [])
            kept = [r for r in rows if r["kept"]]
            if task == "text":  # the top-K is over the whole text pool: inputs selected apart are selected again together
                kept, demoted = select_instances(kept, task, cfg.curate.text.threshold, cfg.curate.text_top_k)
                rejected += demoted
            task_curated = to_curated(kept, cfg.cycle, cfg.curate.conversation_threshold)
            curated += task_curated
            uncurated += uncurated_records(rows, len(task_curated), rng, cfg.cycle, cfg.curate.conversation_threshold)
            if truth:  # the oracle: this cycle's pool of the task with its true labels
                pool = cycle_pool(read_role(catalog, POOLS[task])[0], cfg.cycle, cfg.data.pool_per_cycle, POOLS[task])
                oracle += oracle_records(pool, task, truth, cfg.cycle, cfg.seed)
            task_cfg = getattr(cfg.curate, task)
            scored_ids = {r["id"] for r in rows}  # + instances rejected unscored (too few well-formed candidates)
            unscored = [r for r in rejected if r.get("task") == task and r["id"] not in scored_ids]
            quality[task] = {
                **curation_quality(rows, truth, task, cfg.curate.sweep),
                "similarity": task_cfg.similarity,
                "threshold": task_cfg.threshold,
                "malformed": sum(len(r.get("malformed", [])) for r in rows + unscored),
                # instances that got candidates at all; `total` counts only those with >= 2 well-formed ones
                "instances": len({r["id"] for r in rows} | {r["id"] for r in rejected if r.get("task") == task}),
            }
            if task == "caption":
                quality[task]["conversations"] = sum(1 for r in task_curated if r["sicog"]["conversation"])
            scores[task] = {"best": [r["score"] for r in rows], "all": [s for r in rows for s in r["scores"] if s is not None]}
        write_jsonl(step.out / "curated.jsonl", curated)
        write_jsonl(step.out / "uncurated.jsonl", uncurated)
        write_jsonl(step.out / "oracle.jsonl", oracle)
        write_jsonl(step.out / "rejected.jsonl", rejected)
        write_json(step.out / "curation.json", {"quality": quality, "scores": scores, "rejected": dict(Counter(r["task"] for r in rejected))})
        step.figures.update(curated=len(curated), uncurated=len(uncurated), oracle=len(oracle), rejected=len(rejected))
    return quality
