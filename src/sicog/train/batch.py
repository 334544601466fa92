"""Global batch arithmetic: the paper's global batch is kept whatever the number of ranks.

Table 13 fixes the *global* batch (256 for stage 1, 128 otherwise). A run on 1 CPU, 2 CPU ranks or
32 A100s must take optimizer steps over the same number of records, so gradient accumulation is
derived: accumulation = global / (per_device x world_size). A combination that cannot reach the
target exactly is refused rather than silently rounded (a rounded batch changes the learning-rate
scale the paper's values assume).
"""

from __future__ import annotations

import os

from sicog.errors import UserError


class BatchError(UserError):
    """A global batch that the per-device batch and world size cannot reach exactly (a user error)."""


def world_size() -> int:
    """Ranks of this run: torchrun's WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def batch_plan(global_batch: int, per_device: int | None, ranks: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) with per_device x accumulation x ranks == global_batch.

    `per_device` None: the whole share of each rank in one micro-step (accumulation 1).
    """
    if per_device is None:
        if global_batch % ranks:
            raise BatchError(
                f"global batch {global_batch} cannot be split over {ranks} ranks; set per_device_batch_size "
                f"so that batch_size = per_device_batch_size x accumulation x {ranks}"
            )
        return global_batch // ranks, 1
    accumulation, rest = divmod(global_batch, per_device * ranks)
    if rest or accumulation < 1:
        raise BatchError(f"global batch {global_batch} is not per-device batch {per_device} x world size {ranks} x an integer accumulation >= 1")
    return per_device, accumulation
