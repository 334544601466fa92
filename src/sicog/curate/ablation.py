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


# The oracle's format per task: the direct answer, whose reference is in the world's ground truth.
ORACLE_FORMAT = {"caption": "dd", "vqa": "da", "text": "text"}
ORACLE_TRUTH = {"caption": "caption", "vqa": "answer", "text": "answer"}


def oracle_records(pool: Sequence[dict], task: str, truth: dict, cycle: int, seed: int) -> list[dict]:
    """The oracle ablation, the ceiling of stage 1.5: every record of this cycle's `pool` of `task` that
    has ground truth, with its true label (`truth[id]`: the DD caption, the short answer, the text answer)
    as the answer to its direct-format prompt (DD, DA, text: the prompt step 2 samples that format with),
    as curated records. Records without truth are left out; no truth at all gives no records."""
    from sicog.generate.plan import plan_requests

    labeled = [rec for rec in pool if (truth.get(str(rec["id"])) or {}).get(ORACLE_TRUTH[task]) is not None]
    picked = []
    for request in plan_requests(labeled, task, {ORACLE_FORMAT[task]: 1}, seed):
        candidate = {**request, "text": str(truth[request["id"]][ORACLE_TRUTH[task]])}
        picked.append({"id": request["id"], "task": task, "candidates": [candidate], "best": candidate["index"], "score": None, "scores": [None]})
    return to_curated(picked, cycle, conversation_threshold=float("inf"))
