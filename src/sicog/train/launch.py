"""Run a training stage through torchrun on this machine: the local twin of a PyTorchJob.

On the cluster a PyTorchJob starts `sicog train ...` on every rank; locally the pipeline's train
component starts the same command under `torchrun --standalone --nproc_per_node N` (gloo on CPU), so
the code that trains in the demo is the code that trains at scale. The config travels as a YAML file
(the command line `sicog train --config` reads), the stage's outputs come back from `out`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sicog.config import SicogConfig


def torchrun_command(config_file: str | Path, nproc: int, **options: str | None) -> list[str]:
    """argv of `torchrun ... sicog train --config FILE --stage ... --resume`; None options are left out."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "sicog.cli", "train", "--config", str(config_file), "--resume"]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def torchrun_train(cfg: SicogConfig, *, stage: str, data: str, model: str, world: str, out: str, name: str,
                   curated: str | None = None, pairs: str | None = None) -> dict:
    """Train under torchrun with `cfg.train.nproc` ranks; returns the stage's train log.

    `--resume` is always passed: a rerun into the same `out` (a retried pipeline task) continues
    from the last checkpoint; a fresh `out` has none and starts from scratch.
    """
    with tempfile.TemporaryDirectory(prefix="sicog-train-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        argv = torchrun_command(config_file, cfg.train.nproc, stage=stage, data=data, model=model, world=world,
                                out=out, name=name, curated=curated, pairs=pairs)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.run(argv, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed under torchrun (exit status {proc.returncode})")
    return json.loads((Path(out) / "train_log.json").read_text())
