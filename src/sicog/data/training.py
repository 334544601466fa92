"""Which records a training stage reads: a training-data name -> catalog roles (and curated data).

`TRAIN_DATA` is the one list of training-data names (the CLI, the training request and the pipeline
read it from here). A name means catalog roles, never `meta` fields of records; the sources of a role
are mixed by their catalog `weight` (2 repeats a source, 0.5 draws a seeded half of it).

    training_records(cfg, data, world_dir, curated_dir) -> (records, quarantine rows)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sicog import store
from sicog.config import SicogConfig
from sicog.data.catalog import Catalog, run_catalog
from sicog.data.dataset import read_role
from sicog.errors import UserError
from sicog.records import read_jsonl

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


def weighted_role(catalog: Catalog, role: str, seed: int, quarantine: list[dict]) -> list[dict]:
    """The usable records of `role` (bad rows go to `quarantine`), each source taken `weight` times:
    floor(weight) copies plus a seeded (weight mod 1) share, drawn with (seed, the source's seed)."""
    records, bad = read_role(catalog, role)
    quarantine.extend(bad)
    sources = catalog.sources(role)
    if all(s.weight == 1 for s in sources):
        return records
    mixed: list[dict] = []
    for k, source in enumerate(sources):
        mine = [rec for rec in records if rec.get("meta", {}).get("source") == source.name]
        whole, share = int(source.weight), source.weight - int(source.weight)
        mixed += mine * whole
        if share and mine:
            rng = np.random.default_rng([seed, source.seed, k])
            mixed += [mine[i] for i in np.sort(rng.choice(len(mine), round(share * len(mine)), replace=False))]
    return mixed


def training_records(cfg: SicogConfig, data: str, world_dir: Path, curated_dir: Path | None) -> tuple[list[dict], list[dict]]:
    """(records, quarantine rows) for a training-data name of TRAIN_DATA, read through the run's catalog
    in `world_dir` (the world step's output). curated / uncurated / oracle: `curated_dir/<data>.jsonl` (the curate
    step's output), for curated also train.earlier_curated (a series' earlier cycles, any store URI),
    then the roles of train.pretrain_mix."""
    check_data(data)
    quarantine: list[dict] = []
    catalog = run_catalog(world_dir)
    if data in ROLES_OF:
        return [rec for role in ROLES_OF[data] for rec in weighted_role(catalog, role, cfg.seed, quarantine)], quarantine
    if curated_dir is None:
        raise UserError(f"training data {data!r} needs the curated dataset (the curate step's output)")
    records = list(read_jsonl(Path(curated_dir) / f"{data}.jsonl"))
    if data == "curated":  # a series' earlier cycles' curated data (train.carry_curated)
        for uri in cfg.train.earlier_curated:
            records += [json.loads(line) for line in store.read_text(store.join(uri, "curated.jsonl")).splitlines() if line.strip()]
    for role in cfg.train.pretrain_mix:
        records += weighted_role(catalog, role, cfg.seed, quarantine)
    return records, quarantine
