"""The cluster backend of training: the paper-scale stage-1.5 PyTorchJob against the kubeflow-training SDK
models and the Training Operator's CRD schema; tiny jobs run `torchrun -m sicog.train REQUEST_URI` to
their end (success, failure, timeout, SIGTERM) against a fake Kubernetes API with a tiny operator
(tests/kubeapi.py) and a real S3 API server (moto), and a stage on this path writes its model once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubeflow.training.api_client import ApiClient
from kubeflow.training.utils.utils import FakeResponse
from typer.testing import CliRunner

from kubeapi import FakeKube, crd_schema, pruned
from sicog import store
from sicog.cli import app
from sicog.cluster.launcher import JobError
from sicog.cluster.pytorchjob import build_pytorchjob, job_name, manifest, world_size
from sicog.components.train import train as train_component
from sicog.config import load_config, validate_config
from sicog.errors import UserError
from sicog.steps import StepIO
from sicog.steps.train import train as train_step
from sicog.train.backends import pytorchjob, request_uri
from sicog.train.batch import batch_plan
from sicog.train.request import TrainRequest
from sicog.train.run import rank_output
from tiny import colour_world, tiny_model

PAPER = Path(__file__).parents[1] / "configs" / "paper-qwen2-7b.yaml"
RUN = "s3://sicog/runs/r1"
URIS_15 = {
    "model": f"{RUN}/pipeline/train-align/trained",
    "world": f"{RUN}/pipeline/world/world",
    "curated": f"{RUN}/pipeline/curate/curated",
    "out": f"{RUN}/pipeline/train-pretrain/trained",
}
STAGE_15 = {"stage": "pretrain", "name": "cycle/pretrain", "out": URIS_15["out"], "request_uri": f"{URIS_15['out']}.request.json"}
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


# --- the job at the paper's scale ------------------------------------------------------------------


def test_paper_stage15_job_validates_against_the_sdk_and_the_crd_and_keeps_the_batch():
    cfg = load_config(PAPER)
    job = build_pytorchjob(cfg, **STAGE_15)
    body = manifest(job)

    again = ApiClient().deserialize(FakeResponse(body), "KubeflowOrgV1PyTorchJob")  # how the SDK reads a job back
    assert type(again).__name__ == "KubeflowOrgV1PyTorchJob" and manifest(again) == body
    schema = crd_schema()
    jsonschema.Draft7Validator(schema).validate(body)
    assert pruned(body, schema) == []
    assert body["apiVersion"] == "kubeflow.org/v1" and body["kind"] == "PyTorchJob"
    assert re.fullmatch(r"sicog-cycle-pretrain-[0-9a-f]{8}", body["metadata"]["name"])

    spec = body["spec"]
    assert {kind: r["replicas"] for kind, r in spec["pytorchReplicaSpecs"].items()} == {"Master": 1, "Worker": 3}
    assert spec["nprocPerNode"] == "8"
    assert spec["runPolicy"]["activeDeadlineSeconds"] == cfg.cluster.job_timeout_s == 7 * 86400
    for replica in spec["pytorchReplicaSpecs"].values():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == cfg.cluster.trainer_image
        assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["resources"]["requests"]["cpu"] == "64" and container["resources"]["requests"]["memory"] == "900Gi"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        env = {e["name"]: e for e in container["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "sicog-s3", "key": key}}}
        assert env["SICOG_S3_ENDPOINT"]["value"] == "http://minio.minio.svc:9000" and env["HF_HUB_OFFLINE"]["value"] == "1"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        # Every training process's entry point; the topology comes from the operator's PET_* variables, not the command.
        assert container["command"] == ["torchrun", "-m", "sicog.train", STAGE_15["request_uri"]]

    # Table 13, stage 1.5: global batch 128 = 32 ranks x 4 per device x accumulation 1.
    ranks = world_size(job)
    stage = cfg.train.pretrain
    assert ranks == 32
    assert batch_plan(stage.batch_size, stage.per_device_batch_size, ranks) == (4, 1)
    assert ranks * 4 * 1 == stage.batch_size == 128


def test_job_names_are_dns_labels_unique_per_output_and_stable_per_task():
    long = job_name("Perception/Warm-up of a rather LONG run name_with odd.chars", "s3://b/r1/x")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", long) and len(long) <= 44
    assert job_name("cycle/pretrain", "s3://b/r1/x") == job_name("cycle/pretrain", "s3://b/r1/x")
    assert job_name("cycle/pretrain", "s3://b/r1/x") != job_name("cycle/pretrain", "s3://b/r2/x")
    demo = manifest(build_pytorchjob(load_config(Path(__file__).parents[1] / "configs" / "demo.yaml"), **STAGE_15))
    (master,) = demo["spec"]["pytorchReplicaSpecs"].values()  # one node: no Worker replica
    pod = master["template"]["spec"]
    assert set(pod["containers"][0]["resources"]["requests"]) == {"cpu", "memory"} and "limits" not in pod["containers"][0]["resources"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    jsonschema.Draft7Validator(crd_schema()).validate(demo)


def test_cli_renders_the_pytorchjob_on_request():
    args = [
        "--config",
        str(PAPER),
        "--stage",
        "pretrain",
        "--data",
        "curated",
        "--name",
        "cycle/pretrain",
        "--model",
        URIS_15["model"],
        "--curated",
        URIS_15["curated"],
        "--out",
        URIS_15["out"],
        "--world",
        URIS_15["world"],
    ]
    runner = CliRunner()
    rendered = runner.invoke(app, ["job", "render", "--pytorchjob", *args])  # the default is a TrainJob (tests/test_trainjob.py)
    assert rendered.exit_code == 0, rendered.output
    assert yaml.safe_load(rendered.stdout) == manifest(build_pytorchjob(load_config(PAPER), **STAGE_15))
    configured = runner.invoke(app, ["job", "render", *args, "--set", "cluster.trainer=pytorchjob"])  # or as the config says
    assert configured.exit_code == 0 and yaml.safe_load(configured.stdout) == yaml.safe_load(rendered.stdout)
    local = runner.invoke(app, ["job", "render", *args[:-2], "--world", "data/world"])
    assert local.exit_code == 2 and "its world data/world is not an s3:// URI" in " ".join(local.output.split())  # rich wraps lines
    unknown = runner.invoke(app, ["job", "render", *args[:4], "--data", "nonsense", *args[6:]])
    assert unknown.exit_code == 2 and "unknown training data 'nonsense'" in " ".join(unknown.output.split())


def test_the_request_round_trips_through_the_store_and_names_are_checked(tmp_path):
    request = TrainRequest.of(load_config(PAPER), stage="pretrain", data="curated", name="cycle/pretrain", **URIS_15)
    assert TrainRequest.load(request.save(str(tmp_path / "r.json"))) == request
    assert request.cfg == load_config(PAPER) and request_uri(request.out) == STAGE_15["request_uri"]
    with pytest.raises(UserError, match=r"unknown stage 'stage15': choose warmup, align, pretrain, instruct, dpo"):
        TrainRequest.of({}, stage="stage15", data="curated", name="x", **URIS_15)
    with pytest.raises(UserError, match=r"unknown training data 'cured'; choose from align, base, perception"):
        TrainRequest.of({}, stage="pretrain", data="cured", name="x", **URIS_15)
    with pytest.raises(UserError, match="stage dpo needs preference pairs"):
        TrainRequest.of({}, stage="dpo", data="perception", name="x", **URIS_15)
    (tmp_path / "bad.json").write_text(json.dumps({**json.loads(request.model_dump_json()), "stage": 3}))
    with pytest.raises(UserError, match=r"bad.json: not a training request: stage: Input should be a valid string"):
        TrainRequest.load(str(tmp_path / "bad.json"))


# --- only global rank 0 publishes --------------------------------------------------------------------


def test_under_torchrun_only_rank_zero_publishes_the_shared_staging_folder(bucket, monkeypatch):
    def step(uri):
        with rank_output(uri) as out:
            (out / f"rank-{os.environ['RANK']}.txt").write_text("written")

    uri = f"s3://{bucket}/ranked"
    monkeypatch.setenv("RANK", "1")
    step(uri)
    assert not store.exists(uri)  # rank 1 published nothing
    monkeypatch.setenv("RANK", "0")
    step(uri)
    assert sorted(store.read_manifest(uri)) == ["rank-0.txt", "rank-1.txt"]  # the node's ranks share one staging folder
    assert not (Path(tempfile.gettempdir()) / f"sicog-stage-{hashlib.sha256(uri.encode()).hexdigest()[:16]}").exists()


def test_pytorchjob_needs_every_uri_in_object_storage(bucket):
    uris = {"model": "s3://b/m", "world": "s3://b/w", "curated": "s3://b/c"}
    with pytest.raises(UserError, match=r"its out out is not an s3:// URI"):
        pytorchjob(TrainRequest.of({}, stage="pretrain", data="curated", name="x", out="out", **uris))
    with pytest.raises(UserError, match=r"its world /data/world is not an s3:// URI"):
        pytorchjob(TrainRequest.of({}, stage="pretrain", data="curated", name="x", out=f"s3://{bucket}/run/x", **{**uris, "world": "/data/world"}))


# --- jobs run to their end against the fake API server -----------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A world (colour questions on solid images), the same records as 'curated' data, and a tiny model."""
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
def run(kube, tiny, bucket, s3_server, monkeypatch):
    """The run's folder in the bucket with the tiny inputs published there, and KUBECONFIG for the fake API."""
    api, config = kube
    api.hold = False
    monkeypatch.setenv("KUBECONFIG", str(config))
    work = f"s3://{bucket}/run"
    uris = {}
    for key, step in (("world", "world"), ("model", "model"), ("curated", "curate")):
        uris[key] = store.join(work, "steps", step)
        store.upload_dir(tiny[key], uris[key])
    cfg = validate_config(
        {
            "seed": 3,
            "train": {"max_length": 256, "nproc": 2, "pretrain": {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 4, "per_device_batch_size": 1}},
            "cluster": {
                "trainer": "pytorchjob",
                "namespace": "sicog",
                "s3_secret": "sicog-s3",
                "s3_endpoint": s3_server.endpoint,
                "poll_s": 0.2,
                "job_timeout_s": 300,
            },
        }
    )
    return {"api": api, "kubeconfig": config, "work": work, "cfg": cfg, **uris}


def _out(run, name: str) -> str:
    """The train task's artifact URI under the pipeline root (the run's store folder)."""
    return store.join(run["work"], "pipeline", name.replace("/", "-"), "trained")


def _train(run, name: str = "cycle/pretrain", **uris) -> dict:
    """The train step with cluster.trainer pytorchjob: the pipeline's train task, its inputs at their store URIs."""
    inputs = {key: uris.get(key, run[key]) for key in ("model", "world", "curated")}
    return train_step(run["cfg"], StepIO(f"train:{name}", _out(run, name), inputs), "pretrain", "curated")


@pytest.mark.slow
def test_tiny_stage_runs_as_a_pytorchjob_and_lands_in_the_store(run, capsys):
    api = run["api"]
    result = _train(run)
    log, out = result["log"], _out(run, "cycle/pretrain")

    assert result["model"] == out and result["figures"]["steps"] == 2
    assert (log["steps"], log["world_size"], log["gradient_accumulation_steps"]) == (2, 2, 2)  # 2 ranks x 1 x 2 = batch 4
    assert {"model.safetensors", "train_log.json", "lineage.json", "step.json", "timings.json"} <= set(store.read_manifest(out))
    assert json.loads(store.read_text(store.join(out, "train_log.json"))) == log
    last = json.loads(store.read_text(store.join(out, "lineage.json")))[-1]
    assert (last["name"], last["stage"], last["data"], last["steps"]) == ("cycle/pretrain", "pretrain", "curated", 2)
    assert "train:cycle/pretrain" in json.loads(store.read_text(store.join(out, "timings.json")))
    request = TrainRequest.load(request_uri(out))  # what the pods ran: the step's request, resuming
    assert request.cfg == run["cfg"] and request.resume and (request.model, request.curated, request.out) == (run["model"], run["curated"], out)

    name = job_name("cycle/pretrain", out)
    job = api.created[-1]
    assert job["metadata"]["name"] == name and job["metadata"]["namespace"] == "sicog"
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["torchrun", "-m", "sicog.train", request_uri(out)]
    assert api.envs[name]["AWS_ACCESS_KEY_ID"] == "sicog-test"  # from the Secret: the fake operator passes on no AWS_* of its own
    assert list((api.workdir / name / "tmp").glob("sicog-stage-*")) == []  # rank 0 published the pod's staging folder, then removed it
    lines = capsys.readouterr().out.splitlines()
    assert f"pytorchjob {name}: Running (master active 1)" in lines
    assert f"pytorchjob {name}: Succeeded (master succeeded 1)" in lines

    # A retried task finds its earlier attempt's job (same output, same name) and follows it: no second job.
    created = len(api.created)
    assert _train(run)["log"] == log
    assert len(api.created) == created
    assert f"pytorchjob {name}: exists already (an earlier attempt of this task): following it" in capsys.readouterr().out


@pytest.fixture
def store_writes(monkeypatch):
    """Bytes and keys PUT to the S3 test server (by this process or by a job's pods), counted in its backend."""
    import moto.s3.models as s3

    written: Counter = Counter()
    put, part = s3.S3Backend.put_object, s3.S3Backend.upload_part

    def put_object(self, bucket_name, key_name, value, *args, **kwargs):
        if kwargs.get("multipart") is None:  # a completed multipart upload was counted part by part
            written[key_name] += len(value)
        return put(self, bucket_name, key_name, value, *args, **kwargs)

    def upload_part(self, bucket_name, multipart_id, part_id, value):
        written[f"multipart:{multipart_id}"] += len(value)
        return part(self, bucket_name, multipart_id, part_id, value)

    monkeypatch.setattr(s3.S3Backend, "put_object", put_object)
    monkeypatch.setattr(s3.S3Backend, "upload_part", upload_part)
    return written


@pytest.mark.slow
def test_a_7b_shaped_stage_on_the_cluster_path_writes_its_model_once(run, store_writes, tmp_path):
    """The pipeline's train task with cluster.trainer pytorchjob (the path of a 7B stage; the tiny model stands
    in): the job's rank 0 writes the trained model once, at the task's artifact URI, where the next task
    reads it; nothing is downloaded into the task, and nothing but the job's request is written elsewhere."""
    from kfp.dsl import Model

    out = _out(run, "cycle/pretrain-once")
    trained = Model(name="trained", uri=out, metadata={})
    trained.custom_path = str(tmp_path / "artifact")  # the task's local folder of the artifact (KFP uploads it afterwards)
    returned = train_component.python_func(
        config=run["cfg"].model_dump(mode="json"),
        stage="pretrain",
        data="curated",
        name="cycle/pretrain-once",
        model=run["model"],
        world=run["world"],
        curated=run["curated"],
        trained=trained,
    )
    assert returned == out and trained.metadata["steps"] == 2 and trained.metadata["stage"] == "pretrain"
    assert list(Path(trained.path).iterdir()) == []  # nothing downloaded into the task's artifact folder

    prefix = store._s3(out)[1]
    model_bytes = sum(entry["size"] for entry in store.read_manifest(out).values())  # the trained model's folder
    published = {key: n for key, n in store_writes.items() if key.startswith(prefix + "/")}
    elsewhere = {key: n for key, n in store_writes.items() if not key.startswith(prefix + "/")}
    assert sum(published.values()) == model_bytes + len(store.read_bytes(store.join(out, store.MANIFEST)))  # each file once
    assert list(elsewhere) == [prefix + ".request.json"]  # the job's request, beside the model
    assert store_writes[f"{prefix}/model.safetensors"] == store.read_manifest(out)["model.safetensors"]["size"]  # the weights, once
    total = sum(store_writes.values())
    assert total < 1.1 * model_bytes  # once: not 2x (published, then uploaded again by KFP) or 3x (plus a download)
    print(
        f"\nstage on the cluster path: model {model_bytes} bytes, {total} bytes written to the store ({total / model_bytes:.3f}x), "
        f"0 bytes into the task's folder"
    )


@pytest.mark.slow
def test_failed_job_fails_the_task_with_its_reason_and_the_master_log(run, capsys):
    missing = store.join(run["work"], "steps", "no-such-model")
    with pytest.raises(JobError, match=r"^pytorchjob sicog-bad-pretrain-[0-9a-f]{8} failed: PyTorchJobFailed: .* 1 Master replica\(s\) failed"):
        _train(run, name="bad/pretrain", model=missing)
    err = capsys.readouterr().err
    assert "last lines of sicog-bad-pretrain-" in err and f"error: no such file: {missing}" in err  # the entry point's own one-line error
    out = _out(run, "bad/pretrain")
    assert (
        [p.name for p in (run["api"].workdir / job_name("bad/pretrain", out) / "tmp").glob("sicog-stage-*")]
        == [  # kept for a restarted container
            f"sicog-stage-{hashlib.sha256(out.encode()).hexdigest()[:16]}"
        ]
    )


@pytest.mark.slow
def test_job_past_its_timeout_is_deleted(run):
    api = run["api"]
    api.hold = True  # the job runs until deleted
    run["cfg"].cluster.job_timeout_s = 3
    started = time.monotonic()
    with pytest.raises(JobError, match=r"not finished within the 3 s timeout \(last state: Running\); deleted it"):
        _train(run, name="slow/pretrain")
    assert time.monotonic() - started < 15
    name = job_name("slow/pretrain", _out(run, "slow/pretrain"))
    assert name in api.deleted and api.wait_gone(name)


@pytest.mark.slow
def test_sigterm_deletes_the_job_and_exits_non_zero(run, tmp_path):
    api = run["api"]
    api.hold = True
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
    proc = subprocess.Popen(argv, env={**ENV, **os.environ, "KUBECONFIG": str(run["kubeconfig"])}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    name = job_name("cancel/pretrain", out)
    deadline = time.monotonic() + 60
    while f"pytorchjob {name}: Running (master active 1)\n" not in lines:
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    reader.join(timeout=10)
    assert f"pytorchjob {name}: SIGTERM: deleting the job\n" in lines
    assert name in api.deleted and api.wait_gone(name)  # the job and its (held) master process are gone
    assert TrainRequest.load(f"{out}.request.json").out == out  # `sicog job run` put the request where the pods read it
