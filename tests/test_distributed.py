"""The training entry point `python -m sicog.train REQUEST` under torchrun on CPU: 2 ranks (through the
torchrun backend), kill -9 and resume, ZeRO-3 save, global batch arithmetic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sicog.models import load_model
from sicog.train.backends import torchrun
from sicog.train.batch import BatchError, batch_plan
from sicog.train.request import TrainRequest
from tiny import colour_world, record, tiny_model

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data folder whose instruct role (instruct.jsonl: colour questions + a text-only record) feeds
    training data "base", and a tiny model."""
    root = tmp_path_factory.mktemp("world")
    records = colour_world(root, 5, text_only=True)
    (root / "instruct.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, tiny_model(tmp_path_factory.mktemp("model"), records)


def _config(**train) -> dict:
    stage = {"learning_rate": 1e-2, "max_steps": 8, "batch_size": 4, "per_device_batch_size": 1, "warmup_ratio": 0.1}
    stage.update(train.pop("stage", {}))
    return {"seed": 3, "train": {"max_length": 256, "instruct": stage, **train}}


def _request(world, out: Path, config: dict, resume: bool = False) -> TrainRequest:
    root, model_dir = world
    return TrainRequest.of(config, stage="instruct", data="base", name="instruct/base", model=str(model_dir), world=str(root), out=str(out), resume=resume)


def _argv(request: TrainRequest, nproc=None) -> list[str]:
    """`python -m sicog.train REQUEST` (under torchrun with `nproc` ranks), the request beside its output."""
    path = request.save(f"{request.out}.request.json")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else [sys.executable]
    return [*launcher, "-m", "sicog.train", path]


def _run(argv, timeout=300):
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(argv[-1].removesuffix(".request.json"), "train_log.json").read_text())


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def test_batch_plan_keeps_the_global_batch():
    assert batch_plan(128, 4, 8) == (4, 4)
    assert batch_plan(256, 16, 16) == (16, 1)
    assert batch_plan(16, None, 2) == (8, 1)
    for args in [(128, 3, 8), (128, 32, 8), (16, 4, 3)]:
        with pytest.raises(BatchError, match=f"global batch {args[0]} is not per-device batch {args[1]} x world size {args[2]}"):
            batch_plan(*args)
    with pytest.raises(BatchError, match="cannot be split over 3 ranks"):
        batch_plan(16, None, 3)


def test_impossible_batch_is_refused_in_one_line(world, tmp_path):
    argv = _argv(_request(world, tmp_path / "out", _config(stage={"batch_size": 4, "per_device_batch_size": 1})))
    proc = subprocess.run(argv, env=dict(ENV, WORLD_SIZE="3"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: global batch 4 is not per-device batch 1 x world size 3 x an integer accumulation >= 1"


def test_the_entry_point_takes_one_request():
    proc = subprocess.run([sys.executable, "-m", "sicog.train", "--stage", "instruct"], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: python -m sicog.train REQUEST_URI")


@pytest.mark.slow
def test_two_ranks_on_cpu_match_one_rank(world, tmp_path, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    one = _run(_argv(_request(world, tmp_path / "one", _config()), nproc=1))
    two = torchrun(_request(world, tmp_path / "two", _config(nproc=2)))  # the backend: train.nproc ranks here
    assert (one["world_size"], one["gradient_accumulation_steps"]) == (1, 4)
    assert (two["world_size"], two["gradient_accumulation_steps"]) == (2, 2)  # accumulation halves, global batch kept
    assert one["steps"] == two["steps"] == 8
    assert one["tokens_seen"] == two["tokens_seen"]  # the same records, counted over both ranks
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # same global batches, gradients averaged
    model, processor = load_model(tmp_path / "two")
    assert type(model).__name__ == "LlavaForConditionalGeneration"


@pytest.mark.slow
def test_activation_checkpointing_under_ddp_trains_the_whole_model(world, tmp_path):
    """The paper's settings under torchrun: activation checkpointing (the Trainer then tells DDP not to look
    for unused parameters) with every parameter trainable. LLaVA reads the vision tower's layer -2, so its
    last layer and final norm never get a gradient: left trainable, DDP stops at the second step."""
    from sicog.train.trainer import set_trainable, unused_vision_params

    model, _ = load_model(world[1])
    unused = unused_vision_params(model)
    assert unused and all(".encoder.layers.1." in n or ".post_layernorm." in n for n in unused)  # the tiny tower has 2 layers
    set_trainable(model, "all")
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == unused
    # Half the records text-only and one record per optimizer step: text-only steps leave the tower and the
    # projector without gradients, which DDP must be told to look for.
    mixed = tmp_path / "mixed"
    records = colour_world(mixed, 1) + [record(f"t{k}", None, f"Say {k}.", f"{k}.") for k in range(6)]
    (mixed / "instruct.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = _config(gradient_checkpointing=True, stage={"max_steps": 8, "batch_size": 1})
    log = _run(_argv(_request((mixed, world[1]), tmp_path / "gc", config), nproc=1))
    assert log["steps"] == 8 and log["world_size"] == 1


@pytest.mark.slow
def test_kill_and_resume_ends_with_the_uninterrupted_weights(world, tmp_path):
    config = _config(save_steps=5, stage={"max_steps": 60})
    full = _run(_argv(_request(world, tmp_path / "full", config)))
    out = tmp_path / "killed"
    argv = _argv(_request(world, out, config))
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("checkpoints/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "train_log.json").exists()  # killed mid-run
    resumed = _run(_argv(_request(world, out, config, resume=True)))
    assert resumed["resumed_from"] and resumed["resumed_from"].startswith("checkpoint-")
    assert resumed["steps"] == full["steps"] == 60
    a, b = _weights(tmp_path / "full"), _weights(out)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [s for s, _ in resumed["loss_history"]] == [s for s, _ in full["loss_history"]]
    assert not (out / "checkpoints").exists()  # removed once the stage has finished


@pytest.mark.slow
def test_zero3_saves_a_usable_consolidated_model(world, tmp_path):
    log = _run(_argv(_request(world, tmp_path / "z3", _config(deepspeed="zero3", stage={"max_steps": 3})), nproc=1), timeout=600)
    assert log["deepspeed"] == 3 and log["steps"] == 3
    saved, initial = _weights(tmp_path / "z3"), _weights(world[1])
    assert len(saved) == len(initial) and sum(v.numel() for v in saved.values()) == sum(v.numel() for v in initial.values())
    after, before = load_model(tmp_path / "z3")[0], load_model(world[1])[0]  # loads through the Auto classes
    a, b = dict(after.named_parameters()), dict(before.named_parameters())
    assert set(a) == set(b) and any(not torch.equal(a[k], b[k]) for k in a)
    # every loaded weight is one of the file's (nothing left at a fresh initialisation; lm_head is tied)
    assert sorted(float(v.abs().sum()) for v in saved.values()) == sorted(float(v.abs().sum()) for k, v in after.state_dict().items() if k != "lm_head.weight")


@pytest.mark.slow
def test_sicog_train_is_a_people_command_over_the_torchrun_backend(world, tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from sicog.cli import app

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    root, model_dir = world
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(_config(stage={"max_steps": 2})))
    out = tmp_path / "out"
    args = ["train", "--config", str(config), "--stage", "instruct", "--data", "base", "--model", str(model_dir), "--world", str(root), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_log.json").read_text())["steps"] == 2
    assert json.loads((out / "step.json").read_text())["step"] == "train:instruct/base"  # the default run name
    bad = CliRunner().invoke(app, [*args[:4], "nonsense", *args[5:]])
    assert bad.exit_code == 2 and "unknown stage 'nonsense'" in bad.output
