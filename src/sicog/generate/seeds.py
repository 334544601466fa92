"""Candidate seeds derived from (cycle seed, record id, candidate index).

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
