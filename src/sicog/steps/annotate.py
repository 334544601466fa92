"""The annotate steps: step-1 training data from a teacher (CoD + DD captions) or from LLaVA-CoT (DA + CoT).

`annotate_cod` — Input: caption records (image + original caption). Output: `annotated.jsonl` (a DD and
a CoD record per image, from the teacher at `annotate.endpoint`) and `quarantine.jsonl`. Figures:
records, annotated, quarantined, requests.
`annotate_cot` — Input: LLaVA-CoT tagged records. Output: `annotated.jsonl` (a DA and a structured
CoT record each) and `quarantine.jsonl`. Figures: records, annotated, quarantined.
Paper: Sec. 3.1 (Chain-of-Description: 5 steps; structured CoT: 4 steps) and App. C (the prompts).
"""

from __future__ import annotations

import json
from pathlib import Path

from sicog.console import progress
from sicog.errors import UserError
from sicog.records import validate_records, write_jsonl
from sicog.steps._io import StepIO, as_config, open_step


def annotate_cod(config, io: StepIO, images: str | None = None) -> dict:
    """io.inputs: {"captions": a caption records file}; image paths are relative to `images` (default:
    the captions file's folder)."""
    from sicog.annotate.cod import annotate_cod as annotate
    from sicog.generate.remote import RemoteSampler

    cfg = as_config(config)
    a = cfg.annotate
    if not a.endpoint:
        raise UserError("annotate.endpoint is not set (pass --endpoint URL)")
    with open_step(io, cycle=cfg.cycle) as step, progress() as bar:
        path = step.input("captions")
        root = Path(images) if images else path.parent
        records, bad = validate_records(path, root)
        quarantine = list(bad) + [{"id": r["id"], "reason": "no image", "raw": json.dumps(r)[:500]} for r in records if not r.get("image")]
        records = [r for r in records if r.get("image")]
        teacher = RemoteSampler(
            a.endpoint,
            root,
            served_model=a.served_model,
            concurrency=a.concurrency,
            max_new_tokens=a.max_new_tokens,
            temperature=a.temperature,
            timeout_s=a.timeout_s,
            max_attempts=a.max_attempts,
        )
        todo = bar.add_task("annotating (CoD)", total=None)
        annotated, failed = annotate(
            records, teacher, seed=as_config(config).seed, max_new_tokens=a.max_new_tokens, temperature=a.temperature, advance=lambda n: bar.advance(todo, n)
        )
        write_jsonl(step.out / "annotated.jsonl", annotated)
        write_jsonl(step.out / "quarantine.jsonl", quarantine + failed)
        step.figures.update(
            records=len(records) + len(quarantine), annotated=len(annotated) // 2, quarantined=len(quarantine) + len(failed), requests=teacher.attempts
        )
    return step.figures


def annotate_cot(config, io: StepIO) -> dict:
    """io.inputs: {"llava_cot": a LLaVA-CoT file}."""
    from sicog.annotate.cot import annotate_cot as convert
    from sicog.annotate.cot import read_llava_cot

    cfg = as_config(config)
    with open_step(io, cycle=cfg.cycle) as step:
        rows, malformed = read_llava_cot(step.input("llava_cot"))
        annotated, quarantine = convert(rows)
        write_jsonl(step.out / "annotated.jsonl", annotated)
        write_jsonl(step.out / "quarantine.jsonl", malformed + quarantine)
        step.figures.update(records=len(rows) + len(malformed), annotated=len(annotated) // 2, quarantined=len(malformed) + len(quarantine))
    return step.figures
