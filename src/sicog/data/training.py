"""Which records a training stage reads: a training-data name -> catalog roles (and curated data).

`TRAIN_DATA` is the one list of training-data names (the CLI, the training request and the pipeline
read it from here). A name means catalog roles, never `meta` fields of records; the sources of a role
are mixed by their catalog `weight` (2 repeats a source, 0.5 draws a seeded half of it).

    training_records(cfg, data, world_dir, curated_dir) -> (TrainingRecords, quarantine rows)

Scale (LLaVA-665k on every rank): no record list is held. `TrainingRecords` is a sequence over the
catalog roles' lazy indexes (sicog.data.dataset) and the curated JSONL files' line offsets; building
it makes one pass that reads each record once to find the quarantined ones and keeps the positions
of the usable ones (8 bytes per record), and `records[i]` reads record i again when it is asked for.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sicog import store
from sicog.config import SicogConfig
from sicog.data.catalog import Catalog, run_catalog
from sicog.data.dataset import RoleData, open_role
from sicog.data.formats import JsonlRows, Malformed
from sicog.data.normalize import Quarantined
from sicog.errors import UserError

# Which records each training-data name means.
TRAIN_DATA = {
    "align": "the catalog's align role (stage 1 pairs images with captions)",
    "base": "the catalog's instruct role (stage 2 instruction data)",
    "perception": "the catalog's perception role: DD + CoD captions (step-1 warm-up)",
    "reasoning": "the catalog's reasoning role: DA + CoT answers (step-1 warm-up)",
    "curated": "curated self-generated data + the roles of train.pretrain_mix (stage 1.5)",
    "labeled": "instruct + perception + reasoning roles (the compute-matched control's stage 1.5)",
    "uncurated": "one random candidate per instance + the roles of train.pretrain_mix (ablation's stage 1.5)",
    "oracle": "this cycle's pool with its true labels (the world's truth) + the roles of train.pretrain_mix (oracle ablation's stage 1.5)",
}
ROLES_OF = {
    "align": ("align",),
    "base": ("instruct",),
    "perception": ("perception",),
    "reasoning": ("reasoning",),
    "labeled": ("instruct", "perception", "reasoning"),
}
WARMUP_DATA = ("perception", "reasoning")  # the step-1 tasks (their data has the task's name)


def check_data(data: str) -> str:
    if data not in TRAIN_DATA:
        raise UserError(f"unknown training data {data!r}; choose from {', '.join(TRAIN_DATA)}")
    return data


class TrainingRecords(Sequence):
    """Records read on demand from parts (a reader of record i, and the positions taken from it, in
    order); `records[i]` is a fresh dict each time. Holds remote curated files' local copies open."""

    def __init__(self) -> None:
        self._parts: list[tuple[Callable[[int], dict], np.ndarray]] = []
        self._starts = [0]
        self._local = contextlib.ExitStack()
        weakref.finalize(self, self._local.close)

    def add(self, read: Callable[[int], dict], positions: np.ndarray) -> None:
        self._parts.append((read, np.asarray(positions, dtype=np.int64)))
        self._starts.append(self._starts[-1] + len(positions))

    def add_jsonl(self, uri: str) -> None:
        """Every line of a JSONL file (a local path or a store URI, fetched once for the life of this object)."""
        path = self._local.enter_context(store.node_input(uri)) if store.is_remote(uri) else Path(uri)
        rows = JsonlRows(path)
        for row in rows.index():
            if isinstance(row, Malformed):
                raise UserError(f"{uri}: {row}")
        self.add(rows.row, np.arange(len(rows), dtype=np.int64))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        read, positions = self._parts[k]
        return read(int(positions[i - self._starts[k]]))


def _usable(data: RoleData, quarantine: list[dict]) -> np.ndarray:
    """Positions of the records of `data` that are not quarantined (bad rows go to `quarantine`)."""
    good = np.zeros(len(data), dtype=bool)
    for i in range(len(data)):
        try:
            data.located(i)
            good[i] = True
        except Quarantined as exc:
            quarantine.append(exc.row)
    return np.flatnonzero(good)


def weighted_role(catalog: Catalog, role: str, seed: int, quarantine: list[dict], into: TrainingRecords | None = None) -> TrainingRecords:
    """The usable records of `role` (bad rows go to `quarantine`), each source taken `weight` times:
    floor(weight) copies plus a seeded (weight mod 1) share, drawn with (seed, the source's seed);
    added to `into` (default: a new TrainingRecords), which is returned."""
    records = into if into is not None else TrainingRecords()
    data = open_role(catalog, role)
    good = _usable(data, quarantine)
    if all(s.source.weight == 1 for s in data.sources):
        records.add(data.located, good)
        return records
    start = 0
    for k, source in enumerate(data.sources):
        end = start + len(source)
        mine = good[(good >= start) & (good < end)]
        whole, share = int(source.source.weight), source.source.weight - int(source.source.weight)
        for _ in range(whole):
            records.add(data.located, mine)
        if share and len(mine):
            rng = np.random.default_rng([seed, source.source.seed, k])
            records.add(data.located, mine[np.sort(rng.choice(len(mine), round(share * len(mine)), replace=False))])
        start = end
    return records


def training_records(cfg: SicogConfig, data: str, world_dir: Path, curated_dir: Path | None) -> tuple[TrainingRecords, list[dict]]:
    """(records, quarantine rows) for a training-data name of TRAIN_DATA, read through the run's catalog
    in `world_dir` (the world step's output). curated / uncurated / oracle: `curated_dir/<data>.jsonl` (the curate
    step's output), for curated also train.earlier_curated (a series' earlier cycles, any store URI),
    then the roles of train.pretrain_mix. The records are read when used (see the module docstring)."""
    check_data(data)
    quarantine: list[dict] = []
    catalog = run_catalog(world_dir)
    records = TrainingRecords()
    if data in ROLES_OF:
        for role in ROLES_OF[data]:
            weighted_role(catalog, role, cfg.seed, quarantine, into=records)
        return records, quarantine
    if curated_dir is None:
        raise UserError(f"training data {data!r} needs the curated dataset (the curate step's output)")
    records.add_jsonl(str(Path(curated_dir) / f"{data}.jsonl"))
    if data == "curated":  # a series' earlier cycles' curated data (train.carry_curated)
        for uri in cfg.train.earlier_curated:
            records.add_jsonl(store.join(uri, "curated.jsonl"))
    for role in cfg.train.pretrain_mix:
        weighted_role(catalog, role, cfg.seed, quarantine, into=records)
    return records, quarantine
