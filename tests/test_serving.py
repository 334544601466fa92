"""Cycle-scoped inference servers (sicog.cluster.serving): their manifests, checked against the
Kubernetes 1.30 schemas, and their whole life against the fake Kubernetes API (tests/kubeapi.py),
whose kubelet runs the init container's real `sicog store get` and, in place of the engine, the
stand-in engine (tests/engine.py: `transformers serve` behind vLLM's / SGLang's flags and `n`).

Two real servers start in this file (vLLM and SGLang stand-ins on a tiny LLaVA); every failure path
uses pods that never get that far."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
from kubernetes.client.exceptions import ApiException
from PIL import Image
from typer.testing import CliRunner

from engine import engine_parser
from kubeapi import FakeKube
from sicog.cli import app
from sicog.cluster import launcher, serving
from sicog.cluster.serving import KubeApi, ServerError, delete_servers, launch_server, server_manifests, server_name, sweep_servers
from sicog.config import ENGINE_IMAGES, SicogConfig
from sicog.errors import UserError
from sicog.generate.plan import plan_requests
from sicog.generate.remote import RemoteSampler
from sicog.generate.sample import model_image_edge
from sicog.prompts import CAPTION_COD, CAPTION_DD
from sicog.records import jsonl_lines, read_jsonl
from tiny import IMAGE_SIZE, tiny_sampler_model

NS = "sicog"
KUBE_VERSION = "1.30.0"
RUN = "0b8a2d7e-5f0c-4b5e-9a51-3c2f1e0d9a01"  # a KFP run id
WORKFLOW = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "cycle-abcde", "uid": "5d1c0a8e-0000-4000-8000-000000000001"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()  # the servers' port (each listens on its own 127.0.0.k)


def config(engine: str = "vllm", cluster: dict | None = None, **server) -> SicogConfig:
    return SicogConfig.model_validate(
        {
            "seed": 3,
            "sample": {"engine": engine, "concurrency": 4, "server": {"port": PORT, "startup_s": 180, **server}},
            "cluster": {"namespace": NS, "s3_secret": "sicog-s3", **(cluster or {})},
        }
    )


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    """The fake API with the S3 Secret, and KUBECONFIG pointing at it for the whole module."""
    api = FakeKube(secrets={"sicog-s3": {"AWS_ACCESS_KEY_ID": "sicog-test", "AWS_SECRET_ACCESS_KEY": "sicog-test-secret"}}).start()
    patch = pytest.MonkeyPatch()
    patch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path_factory.mktemp("kube") / "config", namespace=NS)))
    patch.setenv("HOSTNAME", "not-a-pod")
    yield api
    patch.undo()
    api.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny LLaVA folder (a local folder is a store URI) and an image folder: (model_uri, image_root)."""
    tmp = tmp_path_factory.mktemp("serving")
    model_dir = tiny_sampler_model(tmp / "tiny", [CAPTION_DD, CAPTION_COD, "A red circle above a blue square.", "Step 1: x"] * 10)
    root = tmp / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE * 2, IMAGE_SIZE * 3, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return str(model_dir), root


def _records(n: int = 2) -> list[dict]:
    return [{"id": f"img-{i}", "image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nDescribe it."}]} for i in range(n)]


def _left(kube: FakeKube) -> list[str]:
    with kube.lock:
        return sorted({name for (_, name) in list(kube.deployments) + list(kube.services)})


# --- names and manifests -----------------------------------------------------------------------------


def test_server_names_are_dns_1035_deterministic_and_per_role():
    names = {role: server_name(RUN, role) for role in serving.ROLES}
    assert names == {role: server_name(RUN, role) for role in serving.ROLES}  # every attempt of a task: the same
    assert len(set(names.values())) == 3 and server_name("another-run", "perception") != names["perception"]
    for name in [*names.values(), server_name("x" * 500, "perception")]:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
    assert names["backbone"].startswith("sicog-backbone-")
    with pytest.raises(UserError, match="perception, reasoning, backbone"):
        server_name(RUN, "teacher")
    # run ids that are not label values still give valid, distinct labels
    for run_id in ["", "a b/c" * 30, "-x-"]:
        label = serving.run_label(run_id or "?")
        assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", label), label
    assert serving.run_label(RUN) == RUN and serving.run_label("a/b") != serving.run_label("a:b")


GPU_CLUSTER = {
    "accelerator": "nvidia.com/gpu",
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    "tolerations": [{"key": "nvidia.com/gpu"}, {"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoExecute"}],
    "s3_endpoint": "http://minio.minio.svc:9000",
    "shm_size": "16Gi",
}


@pytest.mark.parametrize("engine", ["vllm", "sglang", "tgi"])
def test_manifests_pass_strict_validation_with_placement_labels_and_owner(engine, monkeypatch):
    monkeypatch.setenv("SICOG_IMAGE", "registry.example/sicog:9.9")
    cfg = config(engine, GPU_CLUSTER, gpus=2, cpu="12", memory="100Gi", ttl_s=3600, startup_s=1800)
    deployment, service = server_manifests(cfg, run_id=RUN, role="reasoning", model_uri="s3://sicog/models/base", namespace=NS, owner=WORKFLOW, now=1_000_000)
    for doc in (deployment, service):
        assert kubernetes_validate.validate(doc, KUBE_VERSION, strict=True) == "1.30"
    name = server_name(RUN, "reasoning")
    select = {"app.kubernetes.io/name": "sicog", "app.kubernetes.io/component": "sampler-server", "sicog.io/run": RUN, "sicog.io/role": "reasoning"}
    for doc in (deployment, service):
        meta = doc["metadata"]
        assert meta["name"] == name and meta["namespace"] == NS
        assert meta["labels"] == {**select, "sicog.io/engine": engine, "sicog.io/expires": str(1_000_000 + 3600)}
        assert meta["ownerReferences"] == [{**WORKFLOW, "blockOwnerDeletion": False}]
        assert meta["annotations"]["sicog.io/model-uri"] == "s3://sicog/models/base"
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"] == service["spec"]["selector"] == select
    assert spec["template"]["metadata"]["labels"] == {**select, "sicog.io/engine": engine, "sicog.io/client": "true"}  # PodMonitor, MinIO policy
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == PORT
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == GPU_CLUSTER["node_selector"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoExecute"},
    ]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False and pod["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"] == {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} and "emptyDir" in volumes["model"]
    [init] = pod["initContainers"]
    assert init["image"] == "registry.example/sicog:9.9"
    assert init["command"] + init["args"] == ["sicog", "store", "get", "s3://sicog/models/base", "/models/model"]
    assert {"name": "SICOG_S3_ENDPOINT", "value": "http://minio.minio.svc:9000"} in init["env"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert {"name": key, "valueFrom": {"secretKeyRef": {"name": "sicog-s3", "key": key}}} in init["env"]
    [engine_container] = pod["containers"]
    assert engine_container["name"] == engine and engine_container["image"] == ENGINE_IMAGES[engine]
    assert engine_container["resources"] == {"requests": {"cpu": "12", "memory": "100Gi", "nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in engine_container["env"]
    assert not any("valueFrom" in e for e in engine_container["env"])  # the engine gets no store credentials
    assert engine_container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert engine_container["startupProbe"]["periodSeconds"] * engine_container["startupProbe"]["failureThreshold"] >= 1800
    assert {m["mountPath"]: m.get("readOnly", False) for m in engine_container["volumeMounts"]} == {"/models": True, "/dev/shm": False, "/tmp": False}


ENGINE_ARGS = {
    "vllm": (
        ["vllm", "serve"],
        [
            "/models/model",
            "--served-model-name",
            "backbone",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--max-num-seqs",
            "64",
            "--seed",
            "3",
            "--tensor-parallel-size",
            "2",
            "--dtype",
            "float32",
        ],
    ),
    "sglang": (
        ["python3", "-m", "sglang.launch_server"],
        [
            "--model-path",
            "/models/model",
            "--served-model-name",
            "backbone",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--max-running-requests",
            "64",
            "--random-seed",
            "3",
            "--tp-size",
            "2",
            "--dtype",
            "float32",
            "--enable-metrics",
            "--enable-deterministic-inference",
        ],
    ),
    "tgi": (None, ["--model-id", "/models/model", "--hostname", "0.0.0.0", "--port", "8000", "--max-concurrent-requests", "64", "--num-shard", "2"]),
}


@pytest.mark.parametrize("engine", list(ENGINE_ARGS))
def test_engine_command_per_engine_with_extra_args_and_image_override(engine):
    cfg = config(engine, port=8000, gpus=2, extra_args=["--max-model-len", "8192"])
    cfg.sample.concurrency = 64
    deployment, _ = server_manifests(cfg, run_id=RUN, role="backbone", model_uri="/m", namespace=NS)
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    command, args = ENGINE_ARGS[engine]
    assert c.get("command") == command  # TGI keeps its image's entrypoint (it activates the environment)
    assert c["args"] == args + ["--max-model-len", "8192"]
    assert "ownerReferences" not in deployment["metadata"] and "nodeSelector" not in deployment["spec"]["template"]["spec"]
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "64Gi"}}  # no accelerator configured: no GPU request
    cfg.sample.server.image = "registry.example/engine:1"
    assert (
        server_manifests(cfg, run_id=RUN, role="backbone", model_uri="/m", namespace=NS)[0]["spec"]["template"]["spec"]["containers"][0]["image"]
        == "registry.example/engine:1"
    )
    # A bf16 run (the paper's) serves in bf16 on every engine, TGI included; each engine's parser takes it.
    cfg.train.bf16 = True
    [c] = server_manifests(cfg, run_id=RUN, role="backbone", model_uri="/m", namespace=NS)[0]["spec"]["template"]["spec"]["containers"]
    parsed = engine_parser(engine).parse_args(c["args"][:-2])
    assert parsed.dtype == "bfloat16" and c["args"].count("--dtype") == 1


def test_fake_api_refuses_what_the_api_server_refuses(kube):
    deployment, _ = server_manifests(config(), run_id="refused", role="backbone", model_uri="/m", namespace=NS)
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(ApiException) as err:
        KubeApi.connect().apps.create_namespaced_deployment(NS, deployment)
    assert err.value.status == 422 and "gpus" in err.value.body
    assert _left(kube) == []


# --- what is refused before anything is created --------------------------------------------------------


def test_tgi_is_refused_for_a_llava_and_local_engines_deploy_nothing(kube, model, tmp_path):
    model_uri, _ = model
    before = len(kube.requests)
    with pytest.raises(UserError, match="TGI has no model_type llava") as err:
        launch_server(config("tgi"), run_id=RUN, role="perception", model_uri=model_uri, namespace=NS)
    assert "\n" not in str(err.value)
    for engine in ("local", "openai"):
        with pytest.raises(UserError, match="nothing to deploy"):
            launch_server(config(engine), run_id=RUN, role="perception", model_uri=model_uri, namespace=NS)
    assert kube.requests[before:] == []  # not one API call
    text_only = tmp_path / "qwen2"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    serving.refuse_unservable("tgi", str(text_only))  # the backbone LLM: TGI serves it


def test_image_edge_from_the_stored_processor_config(model, tmp_path):
    assert model_image_edge(model[0]) == IMAGE_SIZE  # transformers 5: processor_config.json's image_processor
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}))
    assert model_image_edge(str(tmp_path)) == 336
    assert model_image_edge(str(tmp_path / "none")) == 0


# --- launches against the fake cluster --------------------------------------------------------------


def _in_task_pod(kube: FakeKube, monkeypatch, tmp_path: Path, namespace: str = NS) -> dict:
    """This process as a KFP task's pod (an Argo Workflow's pod in `namespace`); returns the Workflow."""
    kube.add_pod("cycle-abcde-launch-1234", {"workflows.argoproj.io/workflow": "cycle-abcde"}, namespace)
    workflow = kube.add_workflow("cycle-abcde", namespace)
    monkeypatch.setenv("HOSTNAME", "cycle-abcde-launch-1234")
    (tmp_path / "namespace").write_text(namespace)
    monkeypatch.setattr(launcher, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    return workflow


def test_owner_is_the_task_pods_workflow_in_the_same_namespace_only(kube, monkeypatch, tmp_path, capsys):
    workflow = _in_task_pod(kube, monkeypatch, tmp_path, namespace="elsewhere")
    api = KubeApi.connect()
    assert serving.find_owner(api, "elsewhere") == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "name": "cycle-abcde",
        "uid": workflow["metadata"]["uid"],
    }
    assert serving.find_owner(api, NS) is None
    assert "runs in namespace elsewhere, the servers in sicog" in capsys.readouterr().out
    monkeypatch.setenv("HOSTNAME", "a-laptop")
    assert serving.find_owner(api, "elsewhere") is None and "404" in capsys.readouterr().out


@pytest.mark.timeout(600)  # a real engine stand-in starts (startup_s 180)
def test_launch_samples_with_n_adopts_on_retry_and_delete_stops_it(kube, model, monkeypatch, tmp_path):
    model_uri, root = model
    workflow = _in_task_pod(kube, monkeypatch, tmp_path)
    started = time.monotonic()
    out = launch_server(config("vllm"), run_id=RUN, role="perception", model_uri=model_uri, poll_s=0.2)
    name = server_name(RUN, "perception")
    assert out["name"] == name and out["namespace"] == NS and out["served_model"] == "perception"
    assert re.fullmatch(rf"http://127\.0\.0\.\d+:{PORT}/v1", out["endpoint"]) and out["image_edge"] == IMAGE_SIZE
    print(f"ready in {time.monotonic() - started:.1f} s")
    deployment = kube.deployments[(NS, name)]
    assert deployment["metadata"]["ownerReferences"] == [
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "cycle-abcde", "uid": workflow["metadata"]["uid"], "blockOwnerDeletion": False}
    ]
    # A real chat completion, image + text, through the client the shard tasks use; CoD's 2 candidates go as one request with n=2.
    reqs = plan_requests(_records(), "caption", {"cod": 2, "dd": 1}, cycle_seed=7)
    sampler = RemoteSampler(
        out["endpoint"],
        root,
        served_model=out["served_model"],
        engine="vllm",
        share_prefill=True,
        concurrency=2,
        max_new_tokens=6,
        image_edge=out["image_edge"],
    )
    rows = list(sampler.generate(reqs))
    assert sorted((r["id"], r["index"]) for r in rows) == sorted((r["id"], r["index"]) for r in reqs)
    assert all(isinstance(r["text"], str) and "error" not in r and r["model"] == "perception" for r in rows), rows
    seen = [json.loads(line) for line in jsonl_lines(kube.pod_log(name)) if line.startswith("{")]
    cod_seeds = {r["id"]: r["seed"] for r in reqs if r["format"] == "cod" and r["index"] == 0}
    assert sorted(s["seeds"] for s in seen if s["n"] == 2) == sorted([[seed, seed + 1] for seed in cod_seeds.values()])
    assert sum(s["n"] for s in seen) == len(reqs) and sampler.attempts == 4  # 2 images x (1 CoD request with n=2 + 1 DD)
    # A retried launch task adopts the server: nothing new is created, the same pod keeps serving.
    created = len(kube.created)
    with kube.lock:
        procs = [p for ps in kube.pod_procs.values() for p in ps]
    assert launch_server(config("vllm"), run_id=RUN, role="perception", model_uri=model_uri, poll_s=0.2) == out
    assert len(kube.created) == created
    with kube.lock:
        assert [p for ps in kube.pod_procs.values() for p in ps] == procs
    # The exit handler's task of this sampling group: its role's server goes (another role's handler leaves
    # it alone), processes included; a second call finds nothing.
    assert delete_servers(RUN, NS, role="reasoning") == [] and (NS, name) in kube.deployments
    assert delete_servers(RUN, NS, role="perception") == [name]
    assert kube.server_gone(name) and all(p.poll() is not None for p in procs)
    assert delete_servers(RUN, NS) == []


@pytest.mark.timeout(600)  # a real engine stand-in starts (startup_s 180)
def test_failure_while_sampling_still_deletes_the_server(kube, model):
    """The library view of the pipeline's ExitHandler: sampling fails, the handler's teardown still runs."""
    model_uri, root = model
    run = "run-sampling-fails"
    with pytest.raises(RuntimeError, match="sampling failed"):
        out = launch_server(config("sglang"), run_id=run, role="reasoning", model_uri=model_uri, namespace=NS, poll_s=0.2)
        try:
            [row] = RemoteSampler(out["endpoint"], root, served_model=out["served_model"], engine="sglang", max_new_tokens=4).generate(
                plan_requests(_records(1), "caption", {"dd": 1}, cycle_seed=1)
            )
            assert isinstance(row["text"], str) and row["model"] == "reasoning"
            raise RuntimeError("sampling failed")
        finally:
            assert delete_servers(run, NS) == [server_name(run, "reasoning")]
    assert kube.server_gone(server_name(run, "reasoning")) and _left(kube) == []


FAST_FAILURES = {
    # case: (config, model URI (None: the tiny model), the reason the one line must name)
    "image pull": (
        lambda: config("vllm", image="registry.invalid/sicog/missing-engine:0"),
        None,
        r"container vllm: ImagePullBackOff: Back-off pulling image \"registry.invalid/sicog/missing-engine:0\"",
    ),
    "model fetch": (lambda: config("vllm"), "/nonexistent/model", r"init container fetch-model: CrashLoopBackOff \(last exit code 2"),
    "missing secret key": (
        lambda: config("sglang", cluster={"s3_secret": "other-secret"}),
        None,
        r"init container fetch-model: CreateContainerConfigError: couldn't find key AWS_ACCESS_KEY_ID in Secret other-secret",
    ),
    "engine crash": (lambda: config("vllm"), "BROKEN", r"container vllm: CrashLoopBackOff \(last exit code 1, Error\)"),
}


@pytest.mark.parametrize("case", list(FAST_FAILURES))
def test_a_server_that_cannot_start_fails_fast_with_one_line_and_is_deleted(kube, model, tmp_path, case):
    make_cfg, uri, reason = FAST_FAILURES[case]
    if uri == "BROKEN":  # a folder the init container fetches fine, but no engine can load
        uri = str(tmp_path / "broken")
        Path(uri).mkdir()
        (Path(uri) / "config.json").write_text("{not json")
    run = f"run-{case.replace(' ', '-')}"
    started = time.monotonic()
    with pytest.raises(ServerError) as err:
        launch_server(make_cfg(), run_id=run, role="perception", model_uri=uri or model[0], namespace=NS, poll_s=0.2)
    message = str(err.value)
    assert "\n" not in message and re.search(reason, message), message
    assert message.startswith(f"server {server_name(run, 'perception')} cannot start: pod ") and message.endswith("; deleted it")
    assert time.monotonic() - started < 60  # not startup_s (180 s)
    assert kube.server_gone(server_name(run, "perception")) and _left(kube) == []


def test_startup_timeout_deletes_the_server_and_names_the_last_state(kube, model):
    kube.schedulable = False
    try:
        with pytest.raises(ServerError) as err:
            launch_server(config("vllm", startup_s=1), run_id="run-timeout", role="backbone", model_uri=model[0], namespace=NS, poll_s=0.2)
    finally:
        kube.schedulable = True
    message = str(err.value)
    assert "not ready within the 1 s startup limit" in message and "Unschedulable: 0/1 nodes are available" in message, message
    assert "\n" not in message and kube.server_gone(server_name("run-timeout", "backbone"))


def test_sigterm_while_waiting_deletes_the_server_and_exits_143(kube, model):
    name = server_name("run-cancelled", "backbone")
    kube.schedulable = False

    def cancel_once_created():
        deadline = time.monotonic() + 30
        while (NS, name) not in kube.deployments and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # what a cancelled run's pod gets

    killer = threading.Thread(target=cancel_once_created, daemon=True)
    killer.start()
    try:
        with pytest.raises(SystemExit) as exit_:
            launch_server(config("vllm"), run_id="run-cancelled", role="backbone", model_uri=model[0], namespace=NS, poll_s=0.1)
    finally:
        kube.schedulable = True
        killer.join()
    assert exit_.value.code == 128 + signal.SIGTERM
    assert kube.server_gone(name) and _left(kube) == []


# --- the backstop and the CLI -------------------------------------------------------------------------


def _create(run_id: str, role: str, now: float, owner: dict | None = None, ttl_s: float = 100) -> str:
    api = KubeApi.connect()
    deployment, service = server_manifests(config("vllm", ttl_s=ttl_s), run_id=run_id, role=role, model_uri="/m", namespace=NS, owner=owner, now=now)
    api.core.create_namespaced_service(NS, service)
    api.apps.create_namespaced_deployment(NS, deployment)
    return deployment["metadata"]["name"]


def _owner(workflow: dict) -> dict:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": workflow["metadata"]["name"], "uid": workflow["metadata"]["uid"]}


def test_sweep_deletes_expired_and_ended_runs_servers_and_keeps_live_ones(kube):
    kube.schedulable = False  # no pods needed: objects only
    try:
        done, live = kube.add_workflow("wf-done", NS, "Succeeded"), kube.add_workflow("wf-live", NS, "Running")
        failed = kube.add_workflow("wf-failed", NS, "Failed")
        expired = _create("run-expired", "perception", now=1000)  # expires at 1100
        ended = _create("run-done", "perception", now=1950, owner=_owner(done))
        errored = _create("run-failed", "reasoning", now=1950, owner=_owner(failed))
        gone = _create("run-gone", "perception", now=1950, owner={**_owner(live), "name": "wf-deleted"})
        replaced = _create("run-replaced", "backbone", now=1950, owner={**_owner(live), "uid": "an-older-workflow-of-this-name"})
        kept = _create("run-live", "perception", now=1950, owner=_owner(live))
        unowned = _create("run-unowned", "backbone", now=1950)
        assert sweep_servers(NS, now=2000) == sorted([expired, ended, errored, gone, replaced])
        assert _left(kube) == sorted([kept, unowned])
        assert sweep_servers(NS, now=2000) == []
        assert sweep_servers(NS, now=2100) == sorted([kept, unowned])  # past their TTL, live or not
    finally:
        kube.schedulable = True
    assert _left(kube) == []


def test_cli_sweep_and_teardown(kube):
    kube.schedulable = False
    try:
        expired = _create("run-cli-old", "perception", now=0)  # long expired
        ours = [_create("run-cli", role, now=time.time()) for role in ("perception", "backbone")]
        runner = CliRunner()
        swept = runner.invoke(app, ["serve", "sweep", "--namespace", NS])
        assert swept.exit_code == 0, swept.output
        assert f"server {expired}: deleted (expired)" in swept.output and _left(kube) == sorted(ours)
        down = runner.invoke(app, ["serve", "teardown", "run-cli", "--namespace", NS])
        assert down.exit_code == 0, down.output
        assert all(f"server {name}: deleted" in down.output for name in ours) and _left(kube) == []
        again = runner.invoke(app, ["serve", "teardown", "run-cli", "--namespace", NS])
        assert again.exit_code == 0 and "no servers" in again.output
    finally:
        kube.schedulable = True


# --- the pipeline's own sampling group, run by kfp.local against the stand-ins -------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)  # kfp.local runs the group twice, each starting an engine: ~40 s here, minutes under load
def test_served_sampling_group_under_kfp_local_deletes_its_server_even_when_sampling_fails(kube, model, tmp_path):
    """The compiled cycle's sampling group for a served engine (sicog.pipelines.cycle.served_sampling:
    launch the server, fan out the shards, delete the server in a dsl.ExitHandler, collect from the run's folder),
    run by kfp.local with its real components against the kube API stand-in and the engine stand-in.
    It samples every candidate through the run's own server; when a shard task fails (its store cannot
    be written), the exit handler still deletes the server and nothing of the run is left."""
    from kfp import dsl, local
    from kfp.dsl import Dataset

    from sicog.config import WorldConfig, parameter_dict
    from sicog.pipelines.cycle import served_sampling
    from sicog.world import build_world

    model_uri, _ = model
    world_dir = tmp_path / "world"
    build_world(world_dir, WorldConfig(seed=5, n_base=8, n_annotated=8, n_pool_images=4, n_pool_vqa=4, n_pool_text=4, n_heldout=4))
    cfg = config("vllm")
    cfg.sample.shards, cfg.sample.chunk_size, cfg.sample.max_new_tokens = 2, 2, 6
    group = served_sampling(None)

    def check(config, run_uri, model_uri, run_id):
        world = dsl.importer(artifact_uri=str(world_dir), artifact_class=Dataset, reimport=False)
        group(config=config, run_uri=run_uri, task="caption", sample_shards=[0, 1], role="perception", model_uri=model_uri, run_id=run_id, world=world.output)

    # KFP reads parameter types from annotations, which this module's `from __future__ import annotations` makes strings.
    check.__annotations__ = {"config": dict, "run_uri": str, "model_uri": str, "run_id": str}
    check = dsl.pipeline(name="served-sampling-check")(check)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline"), raise_on_error=False)
    work = tmp_path / "work"
    check(config=parameter_dict(cfg), run_uri=str(work), model_uri=model_uri, run_id="run-kfp-local-ok")
    candidates = sorted((tmp_path / "pipeline").glob("served-sampling-check-*/collect-candidates/candidates/candidates.jsonl"))
    assert len(candidates) == 1, sorted(p.relative_to(tmp_path) for p in (tmp_path / "pipeline").rglob("*.jsonl"))
    rows = list(read_jsonl(candidates[0]))
    assert len(rows) == 4 * 3 and all(r["model"] == "perception" and isinstance(r["text"], str) for r in rows)  # 4 images x (2 CoD + 1 DD)
    assert _left(kube) == []  # the exit handler deleted the server after sampling

    # A shard task fails (its chunks cannot be written: a file stands where the sampling folder goes).
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sampling").write_text("not a folder")
    check(config=parameter_dict(cfg), run_uri=str(broken), model_uri=model_uri, run_id="run-kfp-local-fails")
    assert len(list((tmp_path / "pipeline").glob("served-sampling-check-*/collect-candidates/candidates/candidates.jsonl"))) == 1  # the first run's only
    failed_server = server_name("run-kfp-local-fails", "perception")
    assert any(o.get("kind") == "Deployment" and o["metadata"]["name"] == failed_server for o in kube.created)  # it was up
    assert _left(kube) == []  # ... and the exit handler deleted it all the same
