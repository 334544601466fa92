"""The uncurated ablation: what stage 1.5 would train on if self-consistency chose at random.

Same size as the curated data of each task: as many random instances as curated records, each with
one random well-formed candidate (no score, so no CoD conversation). It isolates what curation adds
over simply training on the model's own samples (the paper's Table 5 question, made explicit here).
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
