"""The default cluster backend of training: a stage as a Kubeflow Trainer v2 TrainJob. The paper-scale
stage-1.5 TrainJob against Trainer v2.2's CRD schema (tests/schemas/); tiny stages run as TrainJobs to
`Complete` and to `Failed` against the fake Kubernetes API (tests/kubeapi.py: its controller runs each
node's `torchrun -m sicog.train REQUEST_URI` with the torch runtime's PET_* variables) and a real S3 API
server (moto); the config's `auto` trainer and the pipeline's placement of train tasks."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from kubeapi import FakeKube, pruned, trainjob_schema
from sicog import store
from sicog.cli import app
from sicog.cluster import launcher
from sicog.cluster.launcher import JobError
from sicog.cluster.pytorchjob import job_name
from sicog.cluster.trainjob import build_trainjob, world_size
from sicog.config import for_cluster, load_config, validate_config
from sicog.errors import UserError
from sicog.steps import StepIO
from sicog.steps.train import train as train_step
from sicog.train.backends import BACKENDS, request_uri, torchrun, trainjob
from sicog.train.batch import batch_plan
from sicog.train.request import TrainRequest
from tiny import colour_world, tiny_model

ROOT = Path(__file__).parents[1]
PAPER = ROOT / "configs" / "paper-qwen2-7b.yaml"
RUN = "s3://sicog/runs/r1"
OUT = f"{RUN}/pipeline/train-pretrain/trained"
STAGE_15 = {"stage": "pretrain", "name": "cycle/pretrain", "out": OUT, "request_uri": f"{OUT}.request.json"}
ARGS = [
    "--config",
    str(PAPER),
    "--stage",
    "pretrain",
    "--data",
    "curated",
    "--name",
    "cycle/pretrain",
    "--model",
    f"{RUN}/pipeline/train-align/trained",
    "--curated",
    f"{RUN}/pipeline/curate/curated",
    "--out",
    OUT,
    "--world",
    f"{RUN}/pipeline/world/world",
]


def _node_patch(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == "sicog.io/trainer"
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    return node["template"]["spec"]["template"]


# --- the TrainJob at the paper's scale ----------------------------------------------------------------


def test_cli_renders_the_paper_stage15_trainjob_valid_against_the_v2_2_crd():
    """`sicog job render` (the default kind) with the paper config and a Kueue queue: 4 nodes x 8 A100,
    node selector, toleration, in-memory /dev/shm, the queue label; valid against Trainer v2.2's CRD,
    with no field the API server would prune."""
    result = CliRunner().invoke(app, ["job", "render", *ARGS, "--set", "cluster.queue=gpu-queue"])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.stdout)
    cfg = load_config(PAPER, ["cluster.queue=gpu-queue"])
    assert job == build_trainjob(cfg, **STAGE_15)
    schema = trainjob_schema()
    jsonschema.Draft7Validator(schema).validate(job)
    assert pruned(job, schema) == []
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")

    meta = job["metadata"]
    assert re.fullmatch(r"sicog-cycle-pretrain-[0-9a-f]{8}", meta["name"]) and meta["name"] == job_name("cycle/pretrain", OUT)
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue" and meta["labels"]["sicog.io/stage"] == "pretrain"
    assert "ownerReferences" not in meta  # rendered on a workstation: no run to belong to
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"}
    assert spec["activeDeadlineSeconds"] == cfg.cluster.job_timeout_s == 7 * 86400
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["image"] == cfg.cluster.trainer_image
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "64", "memory": "900Gi", "nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}}
    # The torch runtime does not wrap the command: torchrun takes the topology from its PET_* variables.
    assert trainer["command"] == ["torchrun", "-m", "sicog.train", STAGE_15["request_uri"]]
    env = {e["name"]: e for e in trainer["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "sicog-s3", "key": key}}}
    assert env["SICOG_S3_ENDPOINT"]["value"] == "http://minio.minio.svc:9000" and not any(k.startswith("PET_") for k in env)

    template = _node_patch(job)
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    pod = template["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (container,) = pod["containers"]
    assert container["name"] == "node" and "env" not in container  # the webhook refuses env for `node` in a patch
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

    # Table 13, stage 1.5: global batch 128 = 32 ranks x 4 per device x accumulation 1.
    stage = cfg.train.pretrain
    assert world_size(job) == 32 and batch_plan(stage.batch_size, stage.per_device_batch_size, 32) == (4, 1)


def test_trainjob_options_and_refusals():
    demo = build_trainjob(load_config(ROOT / "configs" / "demo.yaml", ["cluster.training_runtime=my-torch"]), **STAGE_15)
    jsonschema.Draft7Validator(trainjob_schema()).validate(demo)
    assert demo["spec"]["runtimeRef"]["name"] == "my-torch" and "kueue.x-k8s.io/queue-name" not in demo["metadata"]["labels"]
    assert demo["spec"]["trainer"]["resourcesPerNode"] == {"requests": {"cpu": "8", "memory": "64Gi"}}  # no accelerator: no GPUs
    assert not {"nodeSelector", "tolerations"} & set(_node_patch(demo)["spec"])
    owner = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "cycle-abcde", "uid": "1234"}
    owned = build_trainjob(load_config(PAPER), **STAGE_15, owner=owner)
    assert owned["metadata"]["ownerReferences"] == [{**owner, "blockOwnerDeletion": False}]
    for bad in ("cluster.queue=no queue", "cluster.training_runtime=Torch_Runtime"):
        with pytest.raises(UserError, match=rf"config error: cluster\.{bad.split('.')[1].split('=')[0]}: String should match pattern"):
            load_config(PAPER, [bad])
    with pytest.raises(UserError, match="dpo runs with cluster.trainer torchrun only"):
        validate_config({"train": {"step1": "dpo"}, "cluster": {"trainer": "trainjob"}})
    uris = {"model": "s3://b/m", "world": "/data/world", "curated": "s3://b/c", "out": "s3://b/o"}
    with pytest.raises(UserError, match=r"its world /data/world is not an s3:// URI"):
        trainjob(TrainRequest.of({}, stage="pretrain", data="curated", name="x", **uris))


def test_auto_trainer_is_a_trainjob_on_a_cluster_and_torchrun_here(tmp_path):
    """cluster.trainer's default: TrainJobs in a pipeline compiled for a cluster (their train tasks only
    launch and watch them: no GPUs), torchrun in a local run; DPO's warm-ups stay in the task."""
    assert validate_config({}).cluster.trainer == "auto" and BACKENDS["auto"] is torchrun
    assert for_cluster(validate_config({})).cluster.trainer == "trainjob"
    assert for_cluster(validate_config({"train": {"step1": "dpo"}})).cluster.trainer == "torchrun"
    assert for_cluster(validate_config({"cluster": {"trainer": "pytorchjob"}})).cluster.trainer == "pytorchjob"
    from sicog.pipelines.run import compile_pipeline

    cfg = load_config(PAPER, ["cluster.trainer=auto"])
    ir, _ = yaml.safe_load_all(compile_pipeline(tmp_path / "cycle.yaml", cfg).read_text())
    assert ir["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]["cluster"]["trainer"] == "trainjob"
    train = [e for e in ir["deploymentSpec"]["executors"] if e.startswith("exec-train")]
    assert train and not any("accelerator" in ir["deploymentSpec"]["executors"][e]["container"].get("resources", {}) for e in train)


# --- TrainJobs run to their end against the fake API server ---------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    records = colour_world(root, 3)
    (root / "instruct.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curated = tmp_path_factory.mktemp("curated")
    (curated / "curated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"world": root, "curated": curated, "model": tiny_model(tmp_path_factory.mktemp("model"), records)}


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    api = FakeKube(secrets={"sicog-s3": {"AWS_ACCESS_KEY_ID": "sicog-test", "AWS_SECRET_ACCESS_KEY": "sicog-test-secret"}}).start()
    config = api.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    yield api, config
    api.stop()


@pytest.fixture
def run(kube, tiny, bucket, s3_server, monkeypatch, tmp_path):
    """The tiny inputs in the bucket, KUBECONFIG for the fake API, and this process as a pod of Argo
    Workflow `cycle-abcde` in namespace sicog (the owner of the TrainJobs)."""
    api, config = kube
    api.hold = False
    monkeypatch.setenv("KUBECONFIG", str(config))
    api.add_pod("cycle-abcde-train-1234", {"workflows.argoproj.io/workflow": "cycle-abcde"})
    workflow = api.add_workflow("cycle-abcde")
    monkeypatch.setenv("HOSTNAME", "cycle-abcde-train-1234")
    (tmp_path / "namespace").write_text("sicog")
    monkeypatch.setattr(launcher, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    work = f"s3://{bucket}/trainjob-run"
    uris = {}
    for key, step in (("world", "world"), ("model", "model"), ("curated", "curate")):
        uris[key] = store.join(work, "steps", step)
        store.upload_dir(tiny[key], uris[key])
    cfg = validate_config(
        {
            "seed": 3,
            "train": {"max_length": 256, "nproc": 1, "pretrain": {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 4, "per_device_batch_size": 1}},
            "cluster": {
                "trainer": "trainjob",
                "nodes": 2,
                "namespace": "sicog",
                "s3_secret": "sicog-s3",
                "s3_endpoint": s3_server.endpoint,
                "queue": "cpu-queue",
                "poll_s": 0.2,
                "job_timeout_s": 300,
            },
        }
    )
    return {"api": api, "kubeconfig": config, "work": work, "cfg": cfg, "workflow": workflow, **uris}


def _out(run, name: str) -> str:
    return store.join(run["work"], "pipeline", name.replace("/", "-"), "trained")


def _train(run, name: str = "cycle/pretrain", **uris) -> dict:
    """The pipeline's train step with cluster.trainer trainjob, its inputs at their store URIs."""
    inputs = {key: uris.get(key, run[key]) for key in ("model", "world", "curated")}
    return train_step(run["cfg"], StepIO(f"train:{name}", _out(run, name), inputs), "pretrain", "curated")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_stage_runs_as_a_trainjob_to_complete_and_lands_in_the_store(run, capsys):
    """2 nodes x 1 process: two `torchrun` agents, each with its own /tmp, rendezvous on the PET_*
    variables; global rank 0 (node 0) publishes the model once at the task's artifact URI."""
    api = run["api"]
    result = _train(run)
    log, out = result["log"], _out(run, "cycle/pretrain")
    assert result["model"] == out and result["figures"]["steps"] == 2
    assert (log["steps"], log["world_size"], log["gradient_accumulation_steps"]) == (2, 2, 2)  # 2 nodes x 1 x 2 = batch 4
    assert {"model.safetensors", "train_log.json", "lineage.json", "step.json"} <= set(store.read_manifest(out))
    assert json.loads(store.read_text(store.join(out, "train_log.json"))) == log
    request = TrainRequest.load(request_uri(out))
    assert request.cfg == run["cfg"] and request.resume and request.out == out

    name = job_name("cycle/pretrain", out)
    job = api.created[-1]
    assert job["kind"] == "TrainJob" and job["metadata"]["name"] == name and job["metadata"]["namespace"] == "sicog"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cpu-queue"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "name": "cycle-abcde",
            "uid": run["workflow"]["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    envs = api.node_envs[name]
    assert [(e["PET_NNODES"], e["PET_NPROC_PER_NODE"], e["PET_NODE_RANK"]) for e in envs] == [("2", "1", "0"), ("2", "1", "1")]
    assert all(e["AWS_ACCESS_KEY_ID"] == "sicog-test" for e in envs)  # from the Secret only
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"trainjob {name}: created in namespace sicog (runtime torch-distributed, 2 nodes x 1 processes)") for line in lines)
    assert f"trainjob {name}: Running (node active 1, ready 1)" in lines
    assert f"trainjob {name}: Complete (node succeeded 1)" in lines

    # A retried task finds its earlier attempt's job (same output, same name) and follows it: no second job.
    created = len(api.created)
    assert _train(run)["log"] == log
    assert len(api.created) == created
    assert f"trainjob {name}: exists already (an earlier attempt of this task): following it" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_failed_trainjob_fails_the_task_with_its_reason_and_a_node_log(run, capsys):
    missing = store.join(run["work"], "steps", "no-such-model")
    with pytest.raises(
        JobError,
        match=r"^trainjob sicog-bad-pretrain-[0-9a-f]{8} failed: FailedJobs: jobset failed due to one or more "
        r"job failures \(first failed job: sicog-bad-pretrain-[0-9a-f]{8}-node-0\)$",
    ):
        _train(run, name="bad/pretrain", model=missing)
    captured = capsys.readouterr()
    name = job_name("bad/pretrain", _out(run, "bad/pretrain"))
    assert f"last lines of {name}-node-0-" in captured.err and f"error: no such file: {missing}" in captured.err
    assert "Complete" not in captured.out
    # A retry replaces the failed job (deleted first), and it fails again the same way.
    with pytest.raises(JobError, match="failed: FailedJobs"):
        _train(run, name="bad/pretrain", model=missing)
    assert "an earlier attempt's job has failed: deleting it and starting again" in capsys.readouterr().out
    assert run["api"].deleted.count(name) == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_trainjob_past_its_timeout_is_deleted_and_sigterm_deletes_it(run, tmp_path):
    api = run["api"]
    api.hold = True  # the nodes run until deleted
    run["cfg"].cluster.job_timeout_s = 3
    started = time.monotonic()
    with pytest.raises(JobError, match=r"not finished within the 3 s timeout \(last state: Running\); deleted it"):
        _train(run, name="slow/pretrain")
    assert time.monotonic() - started < 20
    name = job_name("slow/pretrain", _out(run, "slow/pretrain"))
    assert name in api.deleted and api.wait_gone(name)

    run["cfg"].cluster.job_timeout_s = 300
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(run["cfg"].model_dump(mode="json")))
    out = store.join(run["work"], "steps", "train", "cancel/pretrain")
    argv = [
        sys.executable,
        "-m",
        "sicog.cli",
        "job",
        "run",
        "--config",
        str(config),
        "--stage",
        "pretrain",
        "--data",
        "curated",
        "--name",
        "cancel/pretrain",
        "--model",
        run["model"],
        "--world",
        run["world"],
        "--curated",
        run["curated"],
        "--out",
        out,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    name = job_name("cancel/pretrain", out)
    deadline = time.monotonic() + 60
    while f"trainjob {name}: Running (node active 1, ready 1)\n" not in lines:
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    reader.join(timeout=10)
    assert f"trainjob {name}: SIGTERM: deleting the job\n" in lines
    assert name in api.deleted and api.wait_gone(name)
