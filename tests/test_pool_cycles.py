"""A new pool each cycle (paper App. G): data.pool_per_cycle slices each pool role by cycle, and the
candidates of cycle c draw from seeds of (seed, cycle), cycle 1 keeping the configured seed."""

from __future__ import annotations

import pytest

from sicog.config import validate_config
from sicog.errors import UserError
from sicog.generate.plan import plan_requests
from sicog.generate.seeds import cycle_seed
from sicog.steps.sample import cycle_pool

POOL = [{"id": f"p{i}", "image": f"{i}.png", "conversations": []} for i in range(10)]


def test_each_cycle_takes_its_own_slice_of_the_pool_and_the_series_never_reuses_a_record():
    slices = [cycle_pool(POOL, cycle, 4, "pool_images") for cycle in (1, 2)]
    assert [r["id"] for r in slices[0]] == ["p0", "p1", "p2", "p3"] and [r["id"] for r in slices[1]] == ["p4", "p5", "p6", "p7"]
    assert cycle_pool(POOL, 3, 0, "pool_images") == POOL  # 0: the whole pool every cycle
    with pytest.raises(UserError, match="pool_images pool has 10 records; cycle 3 with data.pool_per_cycle=4 needs rows 8..11"):
        cycle_pool(POOL, 3, 4, "pool_images")
    assert validate_config({"data": {"pool_per_cycle": 4}}).data.pool_per_cycle == 4


def test_candidate_seeds_include_the_cycle_number():
    assert cycle_seed(7, 1) == 7  # a single cycle draws what it always drew
    assert len({cycle_seed(7, c) for c in (1, 2, 3)}) == 3 and cycle_seed(7, 2) == cycle_seed(7, 2) < 2**63
    first, second = (plan_requests(POOL[:2], "caption", {"cod": 2, "dd": 1}, cycle_seed(7, c)) for c in (1, 2))
    assert [r["seed"] for r in first] != [r["seed"] for r in second]
    assert [(r["id"], r["index"]) for r in first] == [(r["id"], r["index"]) for r in second]
