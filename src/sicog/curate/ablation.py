"""The uncurated ablation: what stage 1.5 would train on if self-consistency chose at random.

Same size as the curated data of each task: as many random instances as curated records, each with
one random well-formed candidate (no score, so no CoD conversation). It isolates what curation adds
over simply training on the model's own samples (the paper's Table 5 question, made explicit here).

The oracle ablation: the same pool with its true labels (the world's ground truth), the ceiling of
what stage 1.5 on this pool can give; a cycle whose oracle does not beat the base model has a
retraining path that loses stage 1.5, or a pool that carries nothing the model lacks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sicog.curate.select import to_curated


def uncurated_records(rows: Sequence[dict], size: int, rng: random.Random, cycle: int, conversation_threshold: float) -> list[dict]:
    """`size` random scored instances of `rows`, one random well-formed candidate each, as curated records."""
    picked = []
    for row in rng.sample(list(rows), min(size, len(rows))):
        ok = [i for i, s in enumerate(row["scores"]) if s is not None]
        picked.append(dict(row, best=row["candidates"][rng.choice(ok)]["index"], score=None))
    return to_curated(picked, cycle, conversation_threshold)  # score None: no conversation


# The oracle's label per task, first found in the truth row: the reasoning format the cycle's stage 1.5
# trains on (its VQA winners are CoT answers, its caption winners mostly CoD captions) when the truth
# carries its steps (the demo world's does: a question's CoT steps, a caption's CoD steps), else the
# direct format whose reference every truth row has. (format, truth field)
ORACLE_LABELS = {"caption": (("cod", "cod"), ("dd", "caption")), "vqa": (("cot", "cot"), ("da", "answer")), "text": (("text", "answer"),)}


def oracle_label(row: dict, task: str) -> tuple[str, str] | None:
    """(format, text) of the true label of a truth row for `task`, or None when it has none."""
    from sicog.prompts import format_cod, format_cot

    for fmt, field in ORACLE_LABELS[task]:
        value = row.get(field)
        if value is None:
            continue
        if fmt == "cod":
            return fmt, format_cod(value)
        if fmt == "cot":
            return fmt, format_cot(value)  # its steps end with the answer
        return fmt, str(value)
    return None


def oracle_records(pool: Sequence[dict], task: str, truth: dict, cycle: int, seed: int) -> list[dict]:
    """The oracle ablation, the ceiling of stage 1.5: every record of this cycle's `pool` of `task` that
    has ground truth, with its true label (`oracle_label`: a CoT answer or CoD caption where the truth
    has the steps, so that the oracle differs from the cycle's data in the labels' truth and not in
    their format; else the DD caption, the short answer, the text answer) as the answer to the prompt
    step 2 samples that format with, as curated records. Records without truth are left out; no truth
    at all gives no records."""
    from sicog.generate.plan import plan_requests

    picked = []
    for rec in pool:
        label = oracle_label(truth.get(str(rec["id"])) or {}, task)
        if label is None:
            continue
        fmt, text = label
        (request,) = plan_requests([rec], task, {fmt: 1}, seed)
        candidate = {**request, "text": text}
        picked.append({"id": request["id"], "task": task, "candidates": [candidate], "best": candidate["index"], "score": None, "scores": [None]})
    return to_curated(picked, cycle, conversation_threshold=float("inf"))
