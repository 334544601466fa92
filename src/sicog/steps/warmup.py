"""The warm-up step (step 1): systematic cognition from minimal annotations.

`warmup` — Inputs (io.inputs, URIs): `model` (the base model), `world` (the catalog whose perception
role holds the DD + CoD captions, and whose reasoning role holds the DA + CoT answers). Output
(io.out): the perception or the reasoning model with its lineage.json and train_log.json (as the
train step's). With `train.step1: sft` (the paper's main setting) it is stage `warmup` on the task's
data; with `train.step1: dpo` (the paper's DPO variant) preference pairs are made first, into
io.out/dpo-pairs (kept beside the model as provenance), then stage `dpo` trains DPO + SFT on them.
The stage runs on the backend `cluster.trainer` names (sicog.train.backends). Figures: as train.
`dpo_pairs` — Input: the base model, the world. Output: `pairs.jsonl` (chosen = the annotated answer,
rejected = the model's answer on a corrupted copy of the image) and `images/` (the corrupted copies).
Figures: pairs, per corruption method, skipped by reason. (With a cluster job, the pairs are made by
this task, which reads the model once; training runs in the job.)
Paper: Sec. 3.1 (step 1: perception and reasoning models from minimal annotations) and Sec. 4.3 / App.
(DPO variant: rejected answers on blurred, colour-jittered, rotated or masked images; beta 0.1 + SFT).
"""

from __future__ import annotations

from sicog import store
from sicog.console import progress
from sicog.data.training import WARMUP_DATA, training_records
from sicog.errors import UserError
from sicog.steps._io import StepIO, as_config, open_step
from sicog.steps.train import figures, request
from sicog.train import backends

PAIRS = "dpo-pairs"  # the preference pairs' folder under the warmed-up model's


def _check(task: str) -> str:
    if task not in WARMUP_DATA:
        raise UserError(f"unknown step-1 task {task!r}: choose {' or '.join(WARMUP_DATA)}")
    return task


def dpo_pairs(config, io: StepIO, task: str) -> dict:
    """Preference pairs of the task's annotated records; io.inputs {"model", "world"}; returns the figures."""
    from sicog.annotate.dpo import make_pairs

    cfg = as_config(config)
    _check(task)
    with open_step(io, cycle=cfg.cycle) as step, progress() as bar:
        world_dir = step.input("world")
        records, step.quarantine = training_records(cfg, task, world_dir, None)
        stats = make_pairs(records, step.input("model"), world_dir, step.out, cfg.seed, cfg.sample.max_new_tokens, cfg.sample.batch_size, progress=bar)
        step.figures.update(stats)
    return stats


def warmup(config, io: StepIO, task: str, backend=None) -> dict:
    """Warm `task` (perception | reasoning) up from io.inputs["model"] into io.out; returns {"log", "model":
    io.out, "figures"}, as the train step does. io.name: "train:<task>/warmup". `backend`: a function of
    sicog.train.backends (default: the one cluster.trainer names; people's commands train here, with torchrun)."""
    cfg = as_config(config)
    _check(task)
    if cfg.train.step1 == "dpo":
        pairs = store.join(io.out, PAIRS)
        dpo_pairs(cfg, StepIO(f"dpo-pairs:{task}", pairs, {"model": io.inputs["model"], "world": io.inputs["world"]}), task)
        stage, req = "dpo", request(cfg, io, "dpo", task, pairs=pairs)
    else:
        stage, req = "warmup", request(cfg, io, "warmup", task)
    log = (backend or backends.run)(req)
    return {"log": log, "model": req.out, "figures": {"stage": stage, "data": task, **figures(log)}}
