"""Candidate seeds derived from (cycle seed, record id, candidate index); the cycle seed from (seed, cycle).

Why a hash and not `random.Random(seed)` or Python's `hash()`: the seed of a candidate must be the
same on every machine, process and shard (Python's `hash()` of a string is salted per process), and
must not depend on which other records are in the run, so that a resumed or resharded step draws
exactly the same samples.
"""

from __future__ import annotations

import hashlib
import json


def candidate_seed(cycle_seed: int, record_id: str, index: int) -> int:
    """A 63-bit seed: sha256 of the canonical JSON `[cycle_seed, record_id, index]`.

    JSON (not "a:b:c") keeps the string unambiguous when ids contain separators; 63 bits keep the
    value a non-negative signed 64-bit integer, accepted by torch.Generator and JSON readers alike.
    """
    canonical = json.dumps([int(cycle_seed), str(record_id), int(index)], separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def cycle_seed(seed: int, cycle: int) -> int:
    """The seed of one cycle's candidates: the configured seed for cycle 1 (so a single cycle draws what it
    always drew), else a 63-bit hash of `[seed, "cycle", cycle]`, so the cycles of a series sample
    differently even from the same pool and model."""
    if int(cycle) == 1:
        return int(seed)
    canonical = json.dumps([int(seed), "cycle", int(cycle)], separators=(",", ":"), ensure_ascii=True)
    return int.from_bytes(hashlib.sha256(canonical.encode("ascii")).digest()[:8], "big") >> 1
