"""SICOG step 2 as one library call: plan the candidates of a task, sample them, write them.

Input: validated source records of one task (images under `image_root`), a model directory (the
perception model for captions, the reasoning model for VQA, the base model for text-only).
Output: a candidates JSONL (`{"id", "task", "format", "index", "seed", "prompt", "image"?, "text",
"model"}`, one line per candidate) and, beside it, `<stem>.failures.jsonl` with every candidate that
could not be generated and why (`"text": null`, `"error"`); nothing is dropped silently.
References: paper Sec. 3.2 (candidate plans, temperature 0.7, top_p 0.95).
"""

from __future__ import annotations

import time
from pathlib import Path

from sicog.config import SampleConfig
from sicog.generate.local import LocalSampler
from sicog.generate.plan import Task, plan_requests
from sicog.records import write_jsonl


def failures_path(out_path: str | Path) -> Path:
    """Where the failed candidates of `out_path` go: `<stem>.failures.jsonl` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.failures.jsonl")


def _plan_of(task: Task, cfg: SampleConfig) -> dict[str, int] | int:
    return {"caption": cfg.caption_plan, "vqa": cfg.vqa_plan, "text": cfg.text_candidates}[task]


def sample_candidates(
    records: list[dict],
    task: Task,
    model_dir: str | Path,
    out_path: str | Path,
    cfg: SampleConfig,
    cycle_seed: int,
    image_root: str | Path,
    progress=None,
) -> dict:
    """Sample every planned candidate of `records`; returns counts, wall seconds and output tokens.

    Rows are written in source-record order, then candidate index, so the file does not depend on
    the batch size (the sampler yields them in length-sorted batch order).
    """
    requests = plan_requests(records, task, _plan_of(task, cfg), cycle_seed)
    sampler = LocalSampler(
        model_dir,
        image_root,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
    start = time.perf_counter()
    rows = list(sampler.generate(requests, progress=progress))
    seconds = time.perf_counter() - start
    order = {str(rec["id"]): i for i, rec in enumerate(records)}
    rows.sort(key=lambda r: (order[r["id"]], r["index"]))
    good = [r for r in rows if r.get("error") is None]
    failed = [r for r in rows if r.get("error") is not None]
    write_jsonl(out_path, good)
    write_jsonl(failures_path(out_path), failed)
    return {"candidates": len(good), "failures": len(failed), "seconds": round(seconds, 3), "output_tokens": sampler.output_tokens}
