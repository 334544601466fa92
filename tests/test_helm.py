"""The Helm chart helm/sicog, offline: `helm lint --strict`, `helm template`, every rendered resource
against Kubernetes' own schemas (kubernetes-validate, strict), the chart's values schema refusing
bad values, behaviour of the rendered objects, and the rendered scorer and model-fetcher commands run
for real (the scorer answering the gRPC health check its probes use; the fetcher downloading a
published model from an S3 API server on loopback).

helm is the binary `make setup` installs at .tools/bin/helm (or the one SICOG_HELM names); a test
fails, not skips, without it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sicog import store
from sicog.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "sicog"
A100 = CHART / "values-a100.yaml"
# Rendered for and validated against this Kubernetes version (kubernetes-validate 1.37 ships its schemas).
KUBE_VERSION = "1.30.0"
NAMESPACE = "sicog"
MODEL_URI = "s3://sicog/models/base"
# What an install against an existing store must name: the S3 Secret and the sampler's model.
MINIMAL = ["s3.existingSecret=sicog-s3", f"sampler.model.uri={MODEL_URI}"]
CLIENT = {"sicog.io/client": "true"}
# Volume types the `restricted` Pod Security Standard allows.
RESTRICTED_VOLUMES = {"emptyDir", "persistentVolumeClaim", "secret", "configMap", "projected", "downwardAPI", "csi", "ephemeral"}


def helm_bin() -> str:
    path = os.environ.get("SICOG_HELM") or str(ROOT / ".tools" / "bin" / "helm")
    assert os.access(path, os.X_OK), f"no helm at {path}: `make setup` installs it (or set SICOG_HELM)"
    return path


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _value_args(sets=(), values=()) -> list[str]:
    args = []
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def template(*sets: str, values=(), chart: Path = CHART) -> subprocess.CompletedProcess:
    return helm("template", "sicog", str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *_value_args(sets, values))


def render(*sets: str, values=()) -> list[dict]:
    proc = template(*sets, values=values)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def container(deployment: dict, name: str, init: bool = False) -> dict:
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["initContainers" if init else "containers"] if c["name"] == name)


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]) for d in docs if d["kind"] in ("Deployment", "Job")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# An install on AWS without an S3 Secret: the pipeline's service account carries an IAM role (IRSA).
ROLE_ARN = "arn:aws:iam::111122223333:role/sicog"
AWS_ROLE = [f"serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={ROLE_ARN}", f"sampler.model.uri={MODEL_URI}"]

# The three renders the issue names: default values (with what they require), the A100 production
# file, and a trial with the bundled MinIO and no sampler; AWS with a role instead of a Secret; and
# the sampler on TGI instead of the default vLLM.
RENDERS = {
    "default": dict(sets=MINIMAL),
    "tgi": dict(sets=[*MINIMAL, "sampler.engine=tgi"]),
    "a100": dict(sets=[f"sampler.model.uri={MODEL_URI}"], values=[A100]),
    "minio-trial": dict(sets=["minio.enabled=true", "sampler.enabled=false"]),
    "aws-role": dict(sets=AWS_ROLE),
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(*case["sets"], values=case.get("values", ())) for name, case in RENDERS.items()}


def test_helm_is_v3():
    proc = helm("version", "--short")
    assert proc.returncode == 0 and proc.stdout.startswith("v3."), proc.stdout + proc.stderr


@pytest.mark.parametrize("case", list(RENDERS))
def test_lint_strict_passes(case):
    spec = RENDERS[case]
    proc = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *_value_args(spec["sets"], spec.get("values", ())))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # lint downgrades a template's `fail` to an INFO line: none may appear.
    assert "[ERROR]" not in out and "[WARNING]" not in out and "Fail:" not in out, out


@pytest.mark.parametrize("case", list(RENDERS))
def test_every_rendered_resource_passes_kubernetes_validate_strict(rendered, case):
    docs = rendered[case]
    for doc in docs:
        assert kubernetes_validate.validate(doc, KUBE_VERSION, strict=True) == "1.30", doc["kind"]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    if case == "minio-trial":
        assert {"Secret", "PersistentVolumeClaim", "Job"} <= kinds


def test_strict_validation_catches_an_unknown_field(rendered):
    """The check above can fail: one misspelt field in a rendered Deployment is refused."""
    doc = yaml.safe_load(yaml.safe_dump(one(rendered["default"], "Deployment", "sicog-scorer")))
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_scorer_deployment_image_args_and_grpc_probes(rendered):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = one(rendered["default"], "Deployment", "sicog-scorer")
    scorer = container(deployment, "scorer")
    assert scorer["image"] == f"ghcr.io/sicog-project/sicog:{chart['appVersion']}"
    assert scorer["command"] == ["sicog"]
    assert scorer["args"][:2] == ["serve", "scorer"]
    assert {"--port=50051", "--metrics-port=8000", "--model=all-MiniLM-L6-v2", "--device=cpu"} <= set(scorer["args"])
    assert {p["name"]: p["containerPort"] for p in scorer["ports"]} == {"grpc": 50051, "metrics": 8000}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert scorer[probe]["grpc"] == {"port": 50051}, probe
    grace = float(next(a for a in scorer["args"] if a.startswith("--grace-s=")).split("=")[1])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    assert scorer["resources"] == values["scorer"]["resources"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count


def test_scorer_service_is_headless_with_grpc_and_metrics(rendered):
    deployment = one(rendered["default"], "Deployment", "sicog-scorer")
    service = one(rendered["default"], "Service", "sicog-scorer")
    assert service["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 50051 and ports["grpc"]["appProtocol"] == "grpc"
    assert ports["metrics"]["port"] == 8000
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_hpa_and_pdb_target_the_scorer(rendered):
    for case in ("default", "a100"):
        docs = rendered[case]
        deployment = one(docs, "Deployment", "sicog-scorer")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        hpa = one(docs, "HorizontalPodAutoscaler", "sicog-scorer")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sicog-scorer"}
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        pdb = one(docs, "PodDisruptionBudget", "sicog-scorer")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert one(rendered["a100"], "HorizontalPodAutoscaler", "sicog-scorer")["spec"]["minReplicas"] == 2
    pdb = one(rendered["a100"], "PodDisruptionBudget", "sicog-scorer")["spec"]
    assert pdb["minAvailable"] == 1 and "maxUnavailable" not in pdb
    assert one(rendered["default"], "PodDisruptionBudget", "sicog-scorer")["spec"]["maxUnavailable"] == 1
    # Autoscaling off: a fixed replica count and no HPA.
    docs = render(*MINIMAL, "scorer.autoscaling.enabled=false", "scorer.replicas=3", "scorer.podDisruptionBudget.enabled=false")
    assert one(docs, "Deployment", "sicog-scorer")["spec"]["replicas"] == 3
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget"} & {d["kind"] for d in docs}


def test_sampler_runs_pinned_vllm_serve_by_default_on_the_requested_gpus(rendered):
    """The default engine: `vllm serve` with the flags of the runs' own vLLM servers
    (sicog.cluster.serving.engine_command), the image they use, port 8000, /health probes."""
    from sicog.config import ENGINE_IMAGES

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["sampler"]["engine"] == "vllm"
    deployment = one(rendered["default"], "Deployment", "sicog-sampler")
    vllm = container(deployment, "vllm")
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["vllm"]
    assert vllm["image"] == ENGINE_IMAGES["vllm"] and not vllm["image"].endswith(":latest")
    assert vllm["command"] == ["vllm", "serve"]
    assert vllm["args"] == [
        "/models/model",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--served-model-name",
        "sampler",
        "--max-num-seqs",
        "128",
        "--tensor-parallel-size",
        "1",
    ]
    env = {e["name"]: e["value"] for e in vllm["env"]}
    assert env["VLLM_NO_USAGE_STATS"] == env["DO_NOT_TRACK"] == env["HF_HUB_OFFLINE"] == "1" and "USAGE_STATS" not in env
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False  # no VLLM_*-like Service variables
    assert vllm["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= values["sampler"]["startupSeconds"]
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == vllm["resources"]["limits"]["nvidia.com/gpu"] == values["sampler"]["gpus"]
    assert one(rendered["default"], "Service", "sicog-sampler")["spec"]["ports"][0]["port"] == 8000
    # More GPUs: requested and limited alike, and the model sharded over them; an explicit port wins.
    docs = render(
        *MINIMAL,
        "sampler.gpus=2",
        "sampler.port=9000",
        "sampler.servedModelName=backbone",
        "sampler.maxConcurrentRequests=64",
        "sampler.extraArgs={--dtype,bfloat16}",
    )
    vllm = container(one(docs, "Deployment", "sicog-sampler"), "vllm")
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == vllm["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert vllm["args"] == [
        "/models/model",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--served-model-name",
        "backbone",
        "--max-num-seqs",
        "64",
        "--tensor-parallel-size",
        "2",
        "--dtype",
        "bfloat16",
    ]
    assert vllm["ports"][0]["containerPort"] == one(docs, "Service", "sicog-sampler")["spec"]["ports"][0]["port"] == 9000


def test_sampler_runs_pinned_tgi_when_selected(rendered):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tag = values["sampler"]["image"]["tgi"]["tag"]
    # Pinned to the TGI version whose OpenAPI description the remote sampler's tests use.
    openapi_version = re.search(r"version (\d+\.\d+\.\d+)", (ROOT / "tests" / "schemas" / "README.md").read_text())[1]
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag) and tag == openapi_version
    tgi = container(one(rendered["tgi"], "Deployment", "sicog-sampler"), "tgi")
    assert tgi["image"] == f"ghcr.io/huggingface/text-generation-inference:{tag}" and "command" not in tgi
    assert {"--model-id=/models/model", "--port=8080", "--max-concurrent-requests=128", "--max-total-tokens=4096"} <= set(tgi["args"])
    assert tgi["resources"]["requests"]["nvidia.com/gpu"] == tgi["resources"]["limits"]["nvidia.com/gpu"] == values["sampler"]["gpus"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert tgi[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = tgi["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= values["sampler"]["startupSeconds"]
    service = one(rendered["tgi"], "Service", "sicog-sampler")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == 8080
    # The GPU count is the value's, requested and limited alike.
    tgi = container(one(render(*MINIMAL, "sampler.engine=tgi", "sampler.gpus=2"), "Deployment", "sicog-sampler"), "tgi")
    assert tgi["resources"]["requests"]["nvidia.com/gpu"] == tgi["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_dev_shm_is_an_in_memory_emptydir_sized_by_values(rendered):
    for case, engine, size in (("default", "vllm", "1Gi"), ("tgi", "tgi", "1Gi"), ("a100", "vllm", "16Gi")):
        deployment = one(rendered[case], "Deployment", "sicog-sampler")
        mounts = {m["mountPath"]: m["name"] for m in container(deployment, engine)["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": size}


def test_a100_values_select_a100_nodes_and_match_the_paper_config(rendered):
    paper = load_config(ROOT / "configs" / "paper-qwen2-7b.yaml").cluster
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    for name in ("sicog-sampler", "sicog-scorer"):
        spec = one(rendered["a100"], "Deployment", name)["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"} == paper.node_selector
        assert spec["tolerations"] == [toleration]
    assert [{k: v for k, v in t.model_dump().items() if v} for t in paper.tolerations] == [toleration]
    a100 = yaml.safe_load(A100.read_text())
    assert a100["s3"] == {"endpoint": paper.s3_endpoint, "existingSecret": paper.s3_secret}
    # The paper's embedder, on a GPU from the CUDA image the training pods use.
    assert a100["scorer"]["model"] == load_config(ROOT / "configs" / "paper-qwen2-7b.yaml").curate.embedder
    scorer = container(one(rendered["a100"], "Deployment", "sicog-scorer"), "scorer")
    assert scorer["image"] == paper.trainer_image and "--device=cuda" in scorer["args"]
    # NV-Embed-v2 runs its own model code: allowed on both sides, as the config asks.
    assert "--trust-remote-code" in scorer["args"] and load_config(ROOT / "configs" / "paper-qwen2-7b.yaml").curate.trust_remote_code
    assert "--trust-remote-code" not in container(one(rendered["default"], "Deployment", "sicog-scorer"), "scorer")["args"]
    assert scorer["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "HF_HUB_OFFLINE", "value": "0"} in scorer["env"]  # NV-Embed-v2 is not packaged in the image
    assert "nodeSelector" not in one(rendered["default"], "Deployment", "sicog-sampler")["spec"]["template"]["spec"]


def test_sampler_model_from_the_store_or_a_claim(rendered):
    deployment = one(rendered["default"], "Deployment", "sicog-sampler")
    fetch = container(deployment, "fetch-model", init=True)
    assert fetch["command"] + fetch["args"] == ["sicog", "store", "get", MODEL_URI, "/models/model"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["model"]
    assert {"name": "model", "mountPath": "/models"} in fetch["volumeMounts"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in container(deployment, "vllm")["volumeMounts"]
    # From a PVC instead: mounted read-only at the same path, no init container.
    deployment = one(
        render("s3.existingSecret=sicog-s3", "sampler.model.existingClaim=models", "sampler.model.subPath=qwen2-7b"), "Deployment", "sicog-sampler"
    )
    spec = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert {v["name"]: v for v in spec["volumes"]}["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert {"name": "model", "mountPath": "/models/model", "readOnly": True, "subPath": "qwen2-7b"} in container(deployment, "vllm")["volumeMounts"]


def test_store_env_names_the_endpoint_and_the_secret():
    docs = render(*MINIMAL, "s3.endpoint=http://minio.minio.svc:9000")
    env = {e["name"]: e for e in container(one(docs, "Deployment", "sicog-sampler"), "fetch-model", init=True)["env"]}
    assert env["SICOG_S3_ENDPOINT"]["value"] == "http://minio.minio.svc:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "sicog-s3", "key": key}
        assert "value" not in env[key]
    assert not [d for d in docs if d["kind"] == "Secret"]  # an existing Secret: the chart makes none


def test_no_s3_secret_when_the_service_account_carries_a_role(rendered):
    """s3.existingSecret empty and serviceAccount annotated with a role: no Secret anywhere; the model
    fetcher has no key env and runs as that account (still without a Kubernetes API token), so its
    store credentials come from the role through the AWS chain (sicog.store)."""
    docs = rendered["aws-role"]
    assert one(docs, "ServiceAccount", "sicog-pipeline")["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE_ARN}
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert "secretKeyRef" not in yaml.safe_dump_all(docs)
    sampler = one(docs, "Deployment", "sicog-sampler")["spec"]["template"]["spec"]
    assert sampler["serviceAccountName"] == "sicog-pipeline" and sampler["automountServiceAccountToken"] is False
    env = {e["name"] for e in container(one(docs, "Deployment", "sicog-sampler"), "fetch-model", init=True)["env"]}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # With a Secret the sampler keeps the namespace's default account.
    assert "serviceAccountName" not in one(rendered["default"], "Deployment", "sicog-sampler")["spec"]["template"]["spec"]


def test_every_pod_meets_the_restricted_pod_security_standard(rendered):
    for case, docs in rendered.items():
        for where, spec in pod_specs(docs):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert all(isinstance(pod[k], int) and pod[k] > 0 for k in ("runAsUser", "runAsGroup", "fsGroup")), where
            assert pod["runAsUser"] == 10001, where
            assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
            assert spec["automountServiceAccountToken"] is False, where
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, (where, c["name"])
                assert sc["capabilities"] == {"drop": ["ALL"]} and not sc.get("privileged"), (where, c["name"])
                assert not any(p.get("hostPort") for p in c.get("ports", [])), (where, c["name"])
                assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, (where, c["name"])  # writable scratch
            for volume in spec["volumes"]:
                assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, (where, volume)


def test_nothing_secret_is_a_value():
    suspicious = re.compile(r"password|passwd|secret.?key|access.?key|token$|credential", re.IGNORECASE)

    def keys(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield f"{path}.{key}".lstrip(".")
                yield from keys(value, f"{path}.{key}")
        elif isinstance(node, list):
            for item in node:
                yield from keys(item, path)

    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    for name, doc in (
        ("values.yaml", yaml.safe_load((CHART / "values.yaml").read_text())),
        ("values-a100.yaml", yaml.safe_load(A100.read_text())),
        ("values.schema.json", schema),
    ):
        leaked = [k for k in keys(doc) if suspicious.search(k.rsplit(".", 1)[-1])]
        assert not leaked, f"{name}: {leaked}"
    # The only S3 value is a Secret's name.
    assert set(schema["properties"]["s3"]["properties"]) == {"endpoint", "existingSecret", "region"}


def test_bundled_minio_uses_a_generated_secret_kept_out_of_values(rendered):
    docs = rendered["minio-trial"]
    secret = one(docs, "Secret", "sicog-s3")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(len(v) >= 16 for v in secret["data"].values())
    again = one(render("minio.enabled=true", "sampler.enabled=false"), "Secret", "sicog-s3")
    assert again["data"]["AWS_SECRET_ACCESS_KEY"] != secret["data"]["AWS_SECRET_ACCESS_KEY"]  # random, not a value
    minio = container(one(docs, "Deployment", "sicog-minio"), "minio")
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in minio["env"] if "valueFrom" in e}
    assert env == {
        "MINIO_ROOT_USER": {"name": "sicog-s3", "key": "AWS_ACCESS_KEY_ID"},
        "MINIO_ROOT_PASSWORD": {"name": "sicog-s3", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert minio["image"].split(":")[1].startswith("RELEASE.")  # pinned
    # The bucket Job is a hook whose pod the MinIO Service does not select.
    job = one(docs, "Job", "sicog-minio-buckets")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    selector = one(docs, "Service", "sicog-minio")["spec"]["selector"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # With a sampler, its model fetcher reads the bundled MinIO with the generated Secret.
    fetch = container(one(render("minio.enabled=true", f"sampler.model.uri={MODEL_URI}"), "Deployment", "sicog-sampler"), "fetch-model", init=True)
    env = {e["name"]: e for e in fetch["env"]}
    assert env["SICOG_S3_ENDPOINT"]["value"] == f"http://sicog-minio.{NAMESPACE}.svc:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "sicog-s3"


def test_network_policies_admit_only_pipeline_clients(rendered):
    docs = rendered["default"]
    for component, port in (("scorer", "grpc"), ("sampler", "http")):
        policy = one(docs, "NetworkPolicy", f"sicog-{component}")
        deployment = one(docs, "Deployment", f"sicog-{component}")
        assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]  # no monitoring namespaces by default: one rule
        assert rule["from"] == [{"podSelector": {"matchLabels": CLIENT}}]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
    # Client namespaces and monitoring: clients still need the label; monitoring reaches metrics only.
    docs = render(*MINIMAL, "networkPolicy.clientNamespaces={kubeflow-user}", "networkPolicy.monitoringNamespaces={monitoring}")
    clients, metrics = one(docs, "NetworkPolicy", "sicog-scorer")["spec"]["ingress"]
    in_namespace = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["kubeflow-user"]}]}
    assert {"namespaceSelector": in_namespace, "podSelector": {"matchLabels": CLIENT}} in clients["from"]
    assert all(peer.get("podSelector") == {"matchLabels": CLIENT} for peer in clients["from"])
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["monitoring"]
    # MinIO: clients and the chart's own pods.
    minio = one(rendered["minio-trial"], "NetworkPolicy", "sicog-minio")["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": CLIENT}} in minio
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sicog", "app.kubernetes.io/instance": "sicog"}}} in minio
    assert not [d for d in render(*MINIMAL, "networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]


def test_role_lets_the_pipeline_launch_and_watch_trainjobs_and_pytorchjobs(rendered):
    docs = render(
        *MINIMAL, "rbac.extraSubjects[0].kind=ServiceAccount", "rbac.extraSubjects[0].name=pipeline-runner", "rbac.extraSubjects[0].namespace=kubeflow"
    )
    assert one(docs, "ServiceAccount", "sicog-pipeline")
    role = one(docs, "Role", "sicog-pipeline")
    # Kubeflow Trainer v2 (the default trainer) and the Training Operator v1 (cluster.trainer pytorchjob).
    for group, resource in (("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs")):
        jobs = next(r for r in role["rules"] if r["apiGroups"] == [group])
        assert jobs["resources"] == [resource]
        assert {"create", "get", "list", "watch", "patch", "delete"} == set(jobs["verbs"])
    core = next(r for r in role["rules"] if r["apiGroups"] == [""])
    assert {"pods", "pods/log", "events"} == set(core["resources"]) and set(core["verbs"]) == {"get", "list", "watch"}
    # The sampler servers of a run (sicog.cluster.serving): launch, follow, tear down, sweep.
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules[("apps",), ("deployments",)] == {"create", "get", "list", "watch", "patch", "delete"}
    assert rules[("",), ("services",)] == {"create", "get", "list", "delete"}
    assert rules[("argoproj.io",), ("workflows",)] == {"get", "list"}
    assert not any("*" in verbs or "*" in resources for (_, resources), verbs in rules.items())
    binding = one(docs, "RoleBinding", "sicog-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sicog-pipeline"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sicog-pipeline", "namespace": NAMESPACE},
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"},
    ]
    # The pipeline's default service account is this one.
    assert load_config().cluster.service_account == "sicog-pipeline"


def test_sweeper_cronjob_sweeps_the_release_namespace_as_the_pipeline_account(rendered):
    cron = one(rendered["default"], "CronJob", "sicog-sweeper")
    assert cron["spec"]["schedule"] == "*/15 * * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0 and job["ttlSecondsAfterFinished"] > 0
    spec = job["template"]["spec"]
    assert spec["serviceAccountName"] == "sicog-pipeline" and spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is True  # it calls the API; the Role bounds what it may do
    [c] = spec["containers"]
    assert c["image"] == "ghcr.io/sicog-project/sicog:0.1.0"
    assert c["command"] + c["args"] == ["sicog", "serve", "sweep", "--namespace", NAMESPACE]
    # the restricted Pod Security Standard, as every other pod of the chart
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001 and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]} and "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}
    assert all(set(v) - {"name"} <= RESTRICTED_VOLUMES for v in spec["volumes"])
    # the command it runs exists with these options
    assert subprocess.run([str(Path(sys.executable).with_name("sicog")), *c["args"], "--help"], capture_output=True).returncode == 0
    docs = render(*MINIMAL, "sweeper.enabled=false", "sweeper.schedule=0 * * * *")
    assert not [d for d in docs if d["kind"] == "CronJob"]
    assert one(render(*MINIMAL, "sweeper.schedule=0 * * * *"), "CronJob", "sicog-sweeper")["spec"]["schedule"] == "0 * * * *"


BAD_VALUES = {
    # case: (--set items, the key the message must name)
    "missing secret name": ([f"sampler.model.uri={MODEL_URI}"], "s3.existingSecret"),
    "empty secret name": ([f"sampler.model.uri={MODEL_URI}", "s3.existingSecret="], "s3.existingSecret"),
    "negative scorer replicas": ([*MINIMAL, "scorer.replicas=-1"], "scorer.replicas"),
    "negative sampler replicas": ([*MINIMAL, "sampler.replicas=-2"], "sampler.replicas"),
    "zero HPA floor": ([*MINIMAL, "scorer.autoscaling.minReplicas=0"], "scorer.autoscaling.minReplicas"),
    "unknown key": ([*MINIMAL, "scorer.replica=2"], "Additional property replica is not allowed"),
    "unknown top-level key": ([*MINIMAL, "sampeler.gpus=2"], "Additional property sampeler is not allowed"),
    "port out of range": ([*MINIMAL, "scorer.port=70000"], "scorer.port"),
    "TGI tag latest": ([*MINIMAL, "sampler.image.tgi.tag=latest"], "sampler.image.tgi.tag"),
    "TGI tag empty": ([*MINIMAL, "sampler.image.tgi.tag="], "sampler.image.tgi.tag"),
    "vLLM tag latest": ([*MINIMAL, "sampler.image.vllm.tag=latest"], "sampler.image.vllm.tag"),
    "unknown engine": ([*MINIMAL, "sampler.engine=sglang"], "sampler.engine"),
    "not a quantity": ([*MINIMAL, "sampler.shmSize=lots"], "sampler.shmSize"),
    "no sampler model": (["s3.existingSecret=sicog-s3"], "sampler.model"),
    "two sampler models": ([*MINIMAL, "sampler.model.existingClaim=models"], "sampler.model"),
    "zero GPUs": ([*MINIMAL, "sampler.gpus=0"], "sampler.gpus"),
    "not a cron schedule": ([*MINIMAL, "sweeper.schedule=every 15 minutes please"], "sweeper.schedule"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_refuses_bad_values_at_lint_and_template_time(case):
    sets, key = BAD_VALUES[case]
    lint = helm("lint", "--strict", str(CHART), *_value_args(sets))
    assert lint.returncode != 0 and key in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    rendered = template(*sets)
    assert rendered.returncode != 0 and key in rendered.stderr, rendered.stderr
    assert "values don't meet the specifications of the schema" in rendered.stderr


def test_template_guards_what_a_schema_cannot_say():
    proc = template(*MINIMAL, "scorer.autoscaling.minReplicas=5", "scorer.autoscaling.maxReplicas=2")
    assert proc.returncode != 0 and "scorer.autoscaling.maxReplicas (2) is below minReplicas (5)" in proc.stderr


def test_notes_name_the_endpoints_for_the_sicog_config(tmp_path):
    """NOTES.txt is only shown by install: render it through a ConfigMap in a copy of the chart."""
    chart = tmp_path / "sicog"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "notes-test.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
    )

    def notes(*sets):
        proc = template(*sets, chart=chart)
        assert proc.returncode == 0, proc.stderr
        return next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "ConfigMap")["data"]["notes"]

    text = notes(*MINIMAL, "s3.endpoint=http://minio.minio.svc:9000")
    assert "sample.engine:           vllm" in text and "sample.served_model:     sampler" in text
    assert f"sample.endpoint:         http://sicog-sampler.{NAMESPACE}.svc:8000/v1" in text
    text = notes(*MINIMAL, "sampler.engine=tgi")
    assert "sample.engine:           tgi" in text and "sample.served_model" not in text
    assert f"sample.endpoint:         http://sicog-sampler.{NAMESPACE}.svc:8080/v1" in text
    text = notes(*MINIMAL, "s3.endpoint=http://minio.minio.svc:9000")
    assert f"curate.scorer:           sicog-scorer.{NAMESPACE}.svc:50051" in text
    assert "cluster.s3_secret:       sicog-s3" in text and "cluster.s3_endpoint:     http://minio.minio.svc:9000" in text
    assert 'cluster.s3_secret:       ""   (no Secret: credentials from the service account\'s role)' in notes(*AWS_ROLE)
    text = notes("minio.enabled=true", "sampler.enabled=false")
    assert "sample.engine:           local" in text and "sample.endpoint" not in text
    assert f"cluster.s3_endpoint:     http://sicog-minio.{NAMESPACE}.svc:9000" in text


# --- The rendered commands, run for real -------------------------------------------------------


def _pod_env(c: dict, secret: dict[str, str], volumes: dict[str, Path]) -> dict[str, str]:
    """A container's env as the kubelet would set it over the image's (the sicog image is offline:
    HF_HUB_OFFLINE=1): literal values, Secret keys, and paths of mounted volumes moved under this
    machine's folders."""
    env = {"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for item in c.get("env", []):
        if "valueFrom" in item:
            env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
        else:
            env[item["name"]] = _moved(item["value"], volumes)
    return env


def _moved(arg: str, volumes: dict[str, Path]) -> str:
    for mount, local in volumes.items():
        if arg == mount or arg.startswith(mount + "/"):
            return str(local) + arg[len(mount) :]
    return arg


def _command(c: dict, volumes: dict[str, Path]) -> list[str]:
    assert c["command"][0] == "sicog"  # the image's console script; here the same CLI from this environment
    return [sys.executable, "-m", "sicog.cli", *c["command"][1:], *(_moved(a, volumes) for a in c["args"])]


def test_rendered_model_fetcher_downloads_and_verifies_the_published_model(s3_server, bucket, tmp_path):
    model = tmp_path / "published"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava"}')
    (model / "model.safetensors").write_bytes(os.urandom(300_000))
    uri = f"s3://{bucket}/models/base"
    store.upload_dir(model, uri)
    docs = render("s3.existingSecret=sicog-s3", f"s3.endpoint={s3_server.endpoint}", "s3.region=us-east-1", f"sampler.model.uri={uri}")
    fetch = container(one(docs, "Deployment", "sicog-sampler"), "fetch-model", init=True)
    volumes = {"/models": tmp_path / "models", "/tmp": tmp_path / "tmp"}
    for path in volumes.values():
        path.mkdir()
    secret = {"AWS_ACCESS_KEY_ID": "sicog-test", "AWS_SECRET_ACCESS_KEY": "sicog-test-secret"}
    proc = subprocess.run(_command(fetch, volumes), env=_pod_env(fetch, secret, volumes), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fetched = tmp_path / "models" / "model"  # what TGI reads as --model-id=/models/model
    for name in ("config.json", "model.safetensors"):
        assert (fetched / name).read_bytes() == (model / name).read_bytes()


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status


def test_rendered_scorer_serves_on_its_probe_port_and_drains_within_the_grace_period(tmp_path):
    port, metrics_port = free_port(), free_port()
    docs = render(*MINIMAL, f"scorer.port={port}", f"scorer.metricsPort={metrics_port}", "scorer.graceSeconds=5", "scorer.threads=4")
    deployment = one(docs, "Deployment", "sicog-scorer")
    scorer = container(deployment, "scorer")
    probe_port = scorer["readinessProbe"]["grpc"]["port"]
    (tmp_path / "tmp").mkdir()
    volumes = {"/tmp": tmp_path / "tmp"}
    proc = subprocess.Popen(_command(scorer, volumes), env=_pod_env(scorer, {}, volumes), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The startup probe's budget: period x failureThreshold seconds to report SERVING.
        deadline = time.monotonic() + scorer["startupProbe"]["periodSeconds"] * scorer["startupProbe"]["failureThreshold"]
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = _health(probe_port)
            except grpc.RpcError:
                status = None
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.3)
        assert status == health_pb2.HealthCheckResponse.SERVING, proc.poll()
        metrics_port_name = {p["containerPort"]: p["name"] for p in scorer["ports"]}
        assert metrics_port_name[metrics_port] == "metrics"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            assert response.status == 200 and b"sicog_scorer" in response.read()
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends; SIGKILL follows after the grace period
        out, _ = proc.communicate(timeout=deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "draining (grace 5 s)" in out, out


# --- monitoring.enabled: Prometheus Operator objects and the Grafana dashboard ---------------------

MONITORING = [*MINIMAL, "monitoring.enabled=true", "monitoring.labels.release=kube-prometheus-stack"]
# The operator's own CRDs (tests/schemas/README.md): monitoring.coreos.com/v1 of prometheus-operator v0.93.0.
MONITOR_CRDS = {"ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml", "PodMonitor": "monitoring.coreos.com_podmonitors.yaml"}


def monitor_schema(kind: str) -> dict:
    crd = yaml.safe_load((ROOT / "tests" / "schemas" / MONITOR_CRDS[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == "monitoring.coreos.com"
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def test_monitoring_is_off_by_default(rendered):
    for docs in rendered.values():
        assert not [d for d in docs if d["kind"] in MONITOR_CRDS or d["metadata"]["name"].endswith("-dashboard")]


def test_monitoring_renders_servicemonitors_and_a_podmonitor_valid_against_the_operator_crds():
    import jsonschema

    from kubeapi import pruned

    lint = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *_value_args(MONITORING))
    assert lint.returncode == 0 and "[WARNING]" not in lint.stdout, lint.stdout + lint.stderr
    docs = render(*MONITORING)
    monitors = [d for d in docs if d["kind"] in MONITOR_CRDS]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in monitors) == [
        ("PodMonitor", "sicog-engines"),
        ("ServiceMonitor", "sicog-sampler"),
        ("ServiceMonitor", "sicog-scorer"),
    ]
    for doc in monitors:
        schema = monitor_schema(doc["kind"])
        jsonschema.Draft7Validator(schema).validate(doc)
        assert pruned(doc, schema) == [], doc["metadata"]["name"]  # no field the API server would drop
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # the Prometheus' selector
        assert all(isinstance(v, str) for v in doc["metadata"]["labels"].values())
    for doc in docs:  # everything else still passes Kubernetes' own schemas
        if doc["kind"] not in MONITOR_CRDS:
            assert kubernetes_validate.validate(doc, KUBE_VERSION, strict=True) == "1.30", doc["kind"]
    # The check can fail: a misspelt endpoint field, and a bad interval, are refused.
    bad = yaml.safe_load(yaml.safe_dump(one(docs, "ServiceMonitor", "sicog-scorer")))
    bad["spec"]["endpoints"][0]["intervall"] = "30s"
    assert pruned(bad, monitor_schema("ServiceMonitor")) == [".spec.endpoints[0].intervall"]
    bad["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(monitor_schema("ServiceMonitor")).validate(bad)


def test_servicemonitors_select_the_scorer_and_sampler_services_by_port_name():
    docs = render(*MONITORING)
    for component, port in (("scorer", "metrics"), ("sampler", "http")):
        monitor, service = one(docs, "ServiceMonitor", f"sicog-{component}"), one(docs, "Service", f"sicog-{component}")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port] and port in {p["name"] for p in service["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics" and monitor["spec"]["endpoints"][0]["interval"] == "30s"
    # Without a sampler, no monitor of it; engineNamespaces: where the runs' servers are.
    docs = render(*MONITORING, "sampler.enabled=false", "monitoring.engineNamespaces={kubeflow-user}")
    assert not [d for d in docs if d["metadata"]["name"] == "sicog-sampler" and d["kind"] == "ServiceMonitor"]
    assert one(docs, "PodMonitor", "sicog-engines")["spec"]["namespaceSelector"] == {"matchNames": ["kubeflow-user"]}


def test_grafana_dashboard_is_a_sidecar_configmap_over_real_metric_names():
    import json

    docs = render(*MONITORING, "monitoring.dashboard.annotations.grafana_folder=SICOG")
    configmap = one(docs, "ConfigMap", "sicog-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1" and configmap["metadata"]["annotations"] == {"grafana_folder": "SICOG"}
    dashboard = json.loads(configmap["data"]["sicog.json"])
    assert dashboard["uid"] == "sicog-overview" and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    # Every sicog_scorer_* series a panel reads is one the scorer's registry exposes (once each metric has a sample).
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from sicog.scorer.metrics import ScorerMetrics

    metrics = ScorerMetrics()
    metrics.requests.labels("Embed", "OK").inc()
    metrics.latency.labels("Embed").observe(0.01)
    metrics.texts_received.inc(2)
    metrics.on_batch(2, 2)
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    exposed = {sample.name for family in families for sample in family.samples}
    used = set(re.findall(r"\bsicog_scorer_\w+", " ".join(exprs.values())))
    assert len(used) >= 6 and used <= exposed, used - exposed
    assert "histogram_quantile(0.99" in exprs["Scorer: RPC latency"] and "sicog_scorer_requests_total" in exprs["Scorer: throughput"]
    tokens = exprs["Sampling: generated tokens/s"]
    assert all(m in tokens for m in ("vllm:generation_tokens_total", "sglang:generation_tokens_total", "tgi_request_generated_tokens_sum"))
    assert "sicog_score_kept" in exprs["Candidates kept per task"] and "sicog_score_instances" in exprs["Candidates kept per task"]
    assert not one(docs, "ConfigMap", "sicog-dashboard").get("binaryData")
    assert not [d for d in render(*MONITORING, "monitoring.dashboard.enabled=false") if d["metadata"]["name"] == "sicog-dashboard"]
