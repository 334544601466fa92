"""The train step (step 4, and the base model's stages): one training stage of a model.

Inputs (io.inputs, URIs): `model` (the model to start from), `world` (the world step's folder: the
catalog the training data's roles are read through), `curated` (the curate step's folder, for data
curated / uncurated). Output (io.out): the trained model (safetensors + processor), its
`lineage.json` (every stage it went through, with loss history) and `train_log.json`, written once,
where the next task reads it. Figures (step.json): records, quarantined, steps, tokens_per_second.
The stage runs on the backend `cluster.trainer` names (sicog.train.backends): torchrun on this
machine, or a TrainJob / PyTorchJob whose rank 0 writes the model at io.out itself (io.out must then be s3://).
From a foundation model (`model.foundation`: a series' previous cycle, paper App. G) the base model's
own stages (FOUNDATION_STAGES) are not re-run: the model is copied into io.out as it is, 0 steps.
Paper: Sec. 3.4 (stage 1 aligns the projector, stage 1.5 re-pretrains on curated self-generated data,
stage 2 instruction-tunes) and Table 13 (learning rates, batches, schedule).
"""

from __future__ import annotations

import shutil

from sicog import store
from sicog.records import write_json
from sicog.steps._io import StepIO, as_config, open_step
from sicog.train import backends
from sicog.train.request import TrainRequest

# The base model's stages (stage 1, then stage 2 on the instruction data), passed through from a foundation model.
FOUNDATION_STAGES = ("stage1/align", "base/instruct")
PREFIX = "train:"  # a training step's io.name is its timings row: "train:<run name>", e.g. "train:cycle/pretrain"


def run_name(io: StepIO) -> str:
    """The stage's run name (lineage, logs, the job's name) from io.name ("train:cycle/pretrain" -> "cycle/pretrain")."""
    return io.name.removeprefix(PREFIX)


def request(config, io: StepIO, stage: str, data: str, pairs: str | None = None) -> TrainRequest:
    """The TrainRequest of one stage: io.inputs {"model", "world", "curated"?} as URIs, io.out the output."""
    return TrainRequest.of(
        config,
        stage=stage,
        data=data,
        name=run_name(io),
        model=str(io.inputs["model"]),
        world=str(io.inputs["world"]),
        out=str(io.out),
        curated=io.inputs.get("curated") or None,
        pairs=pairs,
    )


def figures(log: dict) -> dict:
    """The trained model's figures for its artifact's metadata."""
    history = log.get("loss_history") or []
    return {"steps": log.get("steps", 0), "final_loss": history[-1][1] if history else None}


def train(config, io: StepIO, stage: str, data: str, backend=None) -> dict:
    """Train `stage` of io.inputs["model"] on `data` into io.out; returns {"log": the train log, "model":
    io.out (the trained model's URI), "figures": stage, data, steps, final_loss}. `backend`: a function of
    sicog.train.backends (default: the one cluster.trainer names)."""
    cfg = as_config(config)
    req = request(cfg, io, stage, data)  # checks the stage and data names first
    if cfg.model.foundation and req.name in FOUNDATION_STAGES:
        log = _pass_through(io, req)
    else:
        log = (backend or backends.run)(req)
    return {"log": log, "model": req.out, "figures": {"stage": stage, "data": data, **figures(log)}}


def _pass_through(io: StepIO, req: TrainRequest) -> dict:
    """The foundation model as this stage's output: copied into io.out, with a 0-step train log."""
    log = {"stage": req.stage, "name": req.name, "steps": 0, "loss_history": [], "skipped": "the foundation model is already aligned and instruction-tuned"}
    with open_step(StepIO(io.name, io.out, {"model": req.model}), cycle=req.cfg.cycle) as step:
        shutil.copytree(step.input("model"), step.out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(store.MANIFEST))
        write_json(step.out / "train_log.json", log)
        step.figures.update(steps=0, skipped=log["skipped"])
    return log
