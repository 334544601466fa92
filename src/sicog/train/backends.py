"""Where a training stage runs: torchrun on this machine, or a cluster job; the same entry point in both.

Every rank of every backend runs `python -m sicog.train REQUEST_URI` (sicog.train.__main__) on a
TrainRequest written as JSON; a backend only decides where those processes run and where the request
file lives. A backend always asks for `resume`: a rerun into the same `out` (a retried task, a
restarted pod) continues from its last checkpoint, and a fresh `out` has none.

- `torchrun`: `python -m torch.distributed.run --standalone --nproc_per_node train.nproc -m sicog.train
  FILE` here (gloo on CPU), the request in a temporary file; inputs in object storage are fetched once
  for all ranks, and rank 0 writes `out` (publishing it when it is s3://). What `sicog train` /
  `sicog warmup` and the pipeline's train task with cluster.trainer torchrun run.
- `trainjob` (the cluster default): a Kubeflow Trainer v2 TrainJob (sicog.cluster.trainjob) of
  cluster.nodes nodes x train.nproc ranks on the ClusterTrainingRuntime cluster.training_runtime,
  created, followed and cleaned up by that module. Its pods see only the store, so every URI of the
  request must be s3://; the request is written beside the output (`<out>.request.json`) and rank 0
  publishes the trained model once, at `out`: where the next task reads it. Nothing is downloaded back.
- `pytorchjob`: the same as a Kubeflow PyTorchJob (sicog.cluster.pytorchjob, sicog.cluster.launcher),
  for clusters still on the Training Operator v1.
- `auto` (cluster.trainer's default) reads as torchrun here: a pipeline compiled for a cluster has it
  resolved to trainjob already (sicog.config.for_cluster).

    run(request) -> train log          the backend of the request's cluster.trainer
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from sicog import store
from sicog.errors import UserError
from sicog.train.request import TrainRequest


class TrainError(RuntimeError):
    """The training processes failed (their own errors are in their output above)."""


def train_log(out: str) -> dict:
    """The finished stage's train_log.json at `out` (a small read, never the model)."""
    return json.loads(store.read_text(store.join(out, "train_log.json")))


def torchrun_command(request_uri: str, nproc: int) -> list[str]:
    """argv of `torchrun --standalone --nproc_per_node N -m sicog.train REQUEST_URI` with this Python."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "sicog.train", str(request_uri)]


def torchrun(request: TrainRequest) -> dict:
    """Train under torchrun with train.nproc ranks on this machine; returns the stage's train log.
    Inputs in object storage are fetched once, here, for all ranks; rank 0 writes `out`."""
    request = request.model_copy(update={"resume": True})
    with tempfile.TemporaryDirectory(prefix="sicog-train-") as tmp, ExitStack() as fetched:
        local = {field: str(fetched.enter_context(store.local_input(uri))) for field, uri in request.uris().items() if field != "out" and store.is_remote(uri)}
        uri = request.model_copy(update=local).save(str(Path(tmp) / "train_request.json"))
        # The ranks' temporary folder is this one, so what they keep there (store.node_input's copies of
        # inputs they read themselves, e.g. a catalog's annotation files) goes with it.
        env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=tmp)
        proc = subprocess.run(torchrun_command(uri, request.cfg.train.nproc), env=env, check=False)
    if proc.returncode != 0:
        raise TrainError(f"training {request.name} failed under torchrun (exit status {proc.returncode})")
    return train_log(request.out)


def request_uri(out: str) -> str:
    """Where a cluster job's pods read their request: beside the output folder, not in it."""
    return f"{str(out).rstrip('/')}.request.json"


def check_cluster_uris(request: TrainRequest) -> None:
    """A cluster job's pods read and write the store only: every URI of the request must be s3://."""
    for field, uri in request.uris().items():
        if not store.is_remote(uri):
            raise UserError(
                f"a cluster training job reads and writes the store only: its {field} {uri} is not an s3:// URI "
                "(run the pipeline with its root in object storage, or use cluster.trainer torchrun)"
            )


def pytorchjob(request: TrainRequest) -> dict:
    """Train as a Kubeflow PyTorchJob writing the model once, at request.out; returns the stage's train log."""
    from sicog.cluster.launcher import job_namespace, run_pytorchjob
    from sicog.cluster.pytorchjob import build_pytorchjob

    check_cluster_uris(request)
    request = request.model_copy(update={"resume": True})
    cfg = request.cfg
    job = build_pytorchjob(cfg, stage=request.stage, name=request.name, out=request.out, request_uri=request.save(request_uri(request.out)))
    run_pytorchjob(job, job_namespace(cfg.cluster.namespace), cfg.cluster.job_timeout_s, cfg.cluster.poll_s)
    return train_log(request.out)


def trainjob(request: TrainRequest) -> dict:
    """Train as a Kubeflow Trainer v2 TrainJob writing the model once, at request.out; returns the stage's train log."""
    from sicog.cluster import trainjob as cluster_trainjob

    check_cluster_uris(request)
    request = request.model_copy(update={"resume": True})
    cluster_trainjob.train(request.cfg, stage=request.stage, name=request.name, out=request.out, request_uri=request.save(request_uri(request.out)))
    return train_log(request.out)


BACKENDS = {"torchrun": torchrun, "trainjob": trainjob, "pytorchjob": pytorchjob, "auto": torchrun}  # by cluster.trainer


def run(request: TrainRequest) -> dict:
    """Train the request with the backend its config names (cluster.trainer); returns the train log."""
    return BACKENDS[request.cfg.cluster.trainer](request)
