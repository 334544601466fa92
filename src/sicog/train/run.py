"""The body of every training process: one TrainRequest, run by each rank.

Every rank reads the inputs (local folders, or verified downloads of s3:// ones, fetched once per node and
shared by its ranks: store.node_input), loads the records of
the request's training data (sicog.data.training) or its preference pairs, and trains; the Trainer
reads torchrun's environment. Only the main rank (global rank 0) records the step's files
(step.json, timings.json, quarantine.jsonl) and lineage.json; the ranks share one output folder
(`rank_output`), which rank 0 seals, or publishes when `out` is in object storage.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sicog import store
from sicog.console import progress
from sicog.data.training import training_records
from sicog.records import read_jsonl, write_json
from sicog.steps._io import StepIO, open_step, read_json
from sicog.train.request import TrainRequest

LINEAGE_KEYS = ("steps", "loss_history", "train_seconds", "records", "skipped")


@contextmanager
def rank_output(uri: str) -> Iterator[Path]:
    """store.local_output, also for one of torchrun's ranks (RANK is set): only global rank 0 seals or
    publishes `uri`; the other ranks write into the same folder and leave it alone.

    For an s3:// output, every rank of a node (a cluster job's pod) stages in one folder named from the
    URI, as they share `out` on a local run; rank 0 (on the master node) publishes it on success and
    removes it. A folder left by a failed attempt stays, so a restarted container in the same pod
    (its /tmp is an emptyDir) resumes from the checkpoints in it."""
    rank = os.environ.get("RANK")
    if rank is None or (rank == "0" and not store.is_remote(uri)):
        with store.local_output(uri) as path:
            yield path
        return
    if not store.is_remote(uri):
        path = store.local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    store.check_access(uri)
    staging = Path(tempfile.gettempdir()) / f"sicog-stage-{hashlib.sha256(str(uri).encode()).hexdigest()[:16]}"
    staging.mkdir(parents=True, exist_ok=True)
    yield staging
    if rank == "0":
        store.upload_dir(staging, uri)
        shutil.rmtree(staging, ignore_errors=True)


def run_request(request: TrainRequest) -> dict:
    """Train the request's stage on this rank; returns the stage's train log (train_log.json)."""
    from sicog.train.trainer import is_main_process, train_stage

    cfg = request.cfg
    main = is_main_process()
    inputs = {"model": request.model, "world": request.world}
    if request.stage == "dpo":
        from sicog.train.dpo import train_dpo as run_stage

        inputs["pairs"] = request.pairs
    else:
        run_stage = train_stage
        if request.curated:
            inputs["curated"] = request.curated
    io = StepIO(f"train:{request.name}", request.out, inputs)
    with open_step(io, cycle=cfg.cycle, output=rank_output, input=store.node_input, record=main) as step, progress() if main else nullcontext() as bar:
        model_dir, world_dir = step.input("model"), step.input("world")
        if request.stage == "dpo":
            records, quarantine = list(read_jsonl(step.input("pairs") / "pairs.jsonl")), []
        else:
            records, quarantine = training_records(cfg, request.data, world_dir, step.inputs.get("curated"))
        log = run_stage(
            model_dir, records, world_dir, step.out, getattr(cfg.train, request.stage), cfg.train, cfg.seed, request.name, progress=bar, resume=request.resume
        )
        if main:
            lineage = read_json(model_dir / "lineage.json", [])
            lineage.append({"name": request.name, "stage": request.stage, "data": request.data, **{k: log[k] for k in LINEAGE_KEYS if k in log}})
            write_json(step.out / "lineage.json", lineage)
            step.quarantine = quarantine
            step.figures.update(records=len(records), quarantined=len(quarantine), steps=log.get("steps"), tokens_per_second=log.get("tokens_per_second"))
    return log
