"""Cycle-scoped inference servers: one Deployment + Service per sampling model of a run, and their end.

With a served `sample.engine` (tgi, vllm, sglang) and no `sample.endpoint`, the compiled pipeline
samples from servers of its own: a launch task per model (perception, reasoning, backbone LLM) calls
`launch_server`, which deploys the engine's upstream image on the configured GPUs (the model fetched
from the store into an emptyDir by an init container running `sicog store get`, which checks every
file against the folder's manifest), waits until it is ready and hands the shard tasks its endpoint.
A server is expensive (GPUs held for as long as it lives), so every way a run can end removes it:

- each sampling group's exit handler calls `delete_servers(run_id, role=...)` (its model's server),
  whether sampling succeeded or failed; `sicog serve teardown RUN_ID` deletes all of a run's;
- the objects are owned by the run's Argo Workflow (ownerReferences), so Kubernetes' garbage
  collector deletes them with the Workflow;
- `sweep_servers` (run by every launch, and by the chart's CronJob `sicog serve sweep`) deletes
  servers whose Workflow is gone or has finished, and any whose `sicog.io/expires` label (launch
  time + sample.server.ttl_s) has passed: the backstop when the exit handler was skipped (KFP skips
  it on some terminations) and no owner could be set.

The launch task fails fast, with one line, when the server cannot come up (image pull errors, a
crash loop, a failed model fetch, a missing Secret) instead of waiting out `startup_s`, and deletes
the server then, on its timeout, and on SIGTERM (a cancelled run). A retried launch task adopts the
server an earlier attempt created (the name is a function of the run and the role).

Kubernetes access comes from sicog.cluster.kube ($KUBECONFIG, else in-cluster credentials, else
~/.kube/config); the namespace follows sicog.cluster.launcher (the configured one, else the pod's own).
Status lines go through sicog.console.say, the readiness wait through sicog.retry.poll.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from typing import Any

from sicog import retry
from sicog.cluster.kube import KubeClients
from sicog.cluster.launcher import api_message, api_status, cleanup_on_signal, job_namespace
from sicog.console import say
from sicog.errors import UserError
from sicog.generate.sample import model_image_edge

ROLES = ("perception", "reasoning", "backbone")
SERVED_ENGINES = ("tgi", "vllm", "sglang")
MODEL_DIR = "/models/model"
COMPONENT = "sampler-server"
NAME_LABEL, COMPONENT_LABEL = "app.kubernetes.io/name", "app.kubernetes.io/component"
RUN_LABEL, ROLE_LABEL, ENGINE_LABEL, EXPIRES_LABEL = "sicog.io/run", "sicog.io/role", "sicog.io/engine", "sicog.io/expires"
MODEL_ANNOTATION = "sicog.io/model-uri"
# On the engine pods: the label the Helm chart's NetworkPolicies admit to the bundled MinIO (the init
# container fetches the model from the store), as on every pipeline task pod (pipelines/placement.py).
CLIENT_LABEL = ("sicog.io/client", "true")
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"  # Argo's label on every pod of a Workflow
WORKFLOW = ("argoproj.io", "v1alpha1", "workflows")
ENDED_PHASES = {"Succeeded", "Failed", "Error"}
# Pod states that do not heal by waiting: the launch fails at once instead of at startup_s.
FATAL_WAITING = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError"}
SERVER_USER = 10001  # the sicog image's user; the engines run as it too (HOME=/tmp)
REQUEST_TIMEOUT_S = 60
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class ServerError(RuntimeError):
    """The server could not be created, did not come up, or could not be deleted: one line."""


def sicog_image() -> str:
    """The project's image (components/_image.py's rule): it has the `sicog` CLI the init container runs."""
    return os.environ.get("SICOG_IMAGE", "ghcr.io/sicog-project/sicog:0.1.0")


# --- names and labels ----------------------------------------------------------------------------


def _digest(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def server_name(run_id: str, role: str) -> str:
    """`sicog-<role>-<10 hex of sha256(run_id)>`: a DNS-1035 label (<= 63 chars, starts with a letter),
    the same for every attempt of a run's launch task, so that a retried task finds its server."""
    if role not in ROLES:
        raise UserError(f"server role {role!r}: choose one of {', '.join(ROLES)}")
    return f"sicog-{role}-{_digest(run_id)}"


def run_label(run_id: str) -> str:
    """The run id as a label value (KFP run ids, UUIDs, are already one); anything else is made one,
    with a digest of the whole id so that two runs never share a label."""
    if _LABEL_VALUE.match(run_id):
        return run_id
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)[:52].strip("-_.")
    return f"{cleaned}-{_digest(run_id)}" if cleaned else _digest(run_id)


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _server_labels(run_id: str, role: str) -> dict[str, str]:
    """What identifies one server: the Deployment's selector, its pod's labels and the Service's selector."""
    return {NAME_LABEL: "sicog", COMPONENT_LABEL: COMPONENT, RUN_LABEL: run_label(run_id), ROLE_LABEL: role}


# --- manifests -----------------------------------------------------------------------------------


def engine_command(cfg, role: str) -> tuple[list[str], list[str]]:
    """(command, args) of the engine container: an OpenAI-compatible server of /models/model named
    `role`, with the sampling task's concurrency as its batch capacity. An empty command keeps the
    image's entrypoint (TGI's activates its environment before text-generation-launcher). Every
    engine serves Prometheus /metrics on the same port (SGLang only with --enable-metrics): the
    chart's PodMonitor scrapes it (helm/sicog, monitoring.enabled)."""
    s, srv = cfg.sample, cfg.sample.server
    port, batch, tp = str(srv.port), str(s.concurrency), str(srv.gpus)
    dtype = cfg.train.weights_dtype  # the dtype the cycle's models are saved in (bf16 in the paper's set-up)
    if s.engine == "vllm":
        return ["vllm", "serve"], [
            MODEL_DIR,
            "--served-model-name",
            role,
            "--host",
            "0.0.0.0",
            "--port",
            port,
            "--max-num-seqs",
            batch,
            "--seed",
            str(cfg.seed),
            "--tensor-parallel-size",
            tp,
            "--dtype",
            dtype,
        ]
    if s.engine == "sglang":
        return ["python3", "-m", "sglang.launch_server"], [
            "--model-path",
            MODEL_DIR,
            "--served-model-name",
            role,
            "--host",
            "0.0.0.0",
            "--port",
            port,
            "--max-running-requests",
            batch,
            "--random-seed",
            str(cfg.seed),
            "--tp-size",
            tp,
            "--dtype",
            dtype,
            "--enable-metrics",  # /metrics: off by default
            "--enable-deterministic-inference",
        ]  # else SGLang ignores each request's seed (sampling_seed)
    if s.engine == "tgi":
        tgi_dtype = ["--dtype", dtype] if dtype == "bfloat16" else []  # TGI's --dtype knows float16 and bfloat16 only
        return [], ["--model-id", MODEL_DIR, "--hostname", "0.0.0.0", "--port", port, "--max-concurrent-requests", batch, "--num-shard", tp, *tgi_dtype]
    raise UserError(f"sample.engine {s.engine}: nothing to deploy (served engines: {', '.join(SERVED_ENGINES)})")


def _engine_env(engine: str) -> list[dict]:
    """Offline (the model is local: no hub lookups from the cluster), no telemetry, caches in /tmp."""
    # USER: the pod's numeric uid has no passwd entry, and getpass.getuser() (torch's compile caches) needs a name.
    env = {"HF_HUB_OFFLINE": "1", "HOME": "/tmp", "HF_HOME": "/tmp/hf", "USER": "sicog", "DO_NOT_TRACK": "1"}
    env.update({"tgi": {"USAGE_STATS": "off"}, "vllm": {"VLLM_NO_USAGE_STATS": "1"}}.get(engine, {}))
    return [{"name": k, "value": v} for k, v in env.items()]


def _store_env(cluster) -> list[dict]:
    """The store's endpoint and the S3 Secret's keys (sicog.store.SECRET_ENV), as every task gets them
    (no Secret: none, and the pod runs as the service account whose role the credential chain finds)."""
    from sicog.store import SECRET_ENV

    env = [{"name": "HOME", "value": "/tmp"}]
    if cluster.s3_endpoint:
        env.append({"name": "SICOG_S3_ENDPOINT", "value": cluster.s3_endpoint})
    if cluster.s3_secret:
        env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": cluster.s3_secret, "key": k}}} for k in SECRET_ENV]
    return env


def _resources(cfg) -> dict:
    """CPU and memory requested; `gpus` of the accelerator requested and limited alike (extended
    resources are never overcommitted). No accelerator configured: a CPU-only cluster."""
    srv, accelerator = cfg.sample.server, cfg.cluster.accelerator
    requests: dict[str, Any] = {"cpu": srv.cpu, "memory": srv.memory}
    limits: dict[str, Any] = {}
    if accelerator:
        requests[accelerator] = limits[accelerator] = str(srv.gpus)
    return {"requests": requests, **({"limits": limits} if limits else {})}


def _probe(port_name: str, period_s: int, failures: int, timeout_s: int = 5) -> dict:
    return {"httpGet": {"path": "/health", "port": port_name}, "periodSeconds": period_s, "timeoutSeconds": timeout_s, "failureThreshold": failures}


def _container_security(read_only_root: bool) -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": read_only_root}


def _init_container(cfg, model_uri: str) -> dict:
    return {
        "name": "fetch-model",
        "image": sicog_image(),
        "command": ["sicog"],
        "args": ["store", "get", model_uri, MODEL_DIR],
        "env": _store_env(cfg.cluster),
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "securityContext": _container_security(True),
        "volumeMounts": [{"name": "model", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def _engine_container(cfg, role: str) -> dict:
    engine, srv = cfg.sample.engine, cfg.sample.server
    command, args = engine_command(cfg, role)
    return {
        "name": engine,
        "image": srv.image or _default_image(engine),
        **({"command": command} if command else {}),
        "args": args + list(srv.extra_args),
        "env": _engine_env(engine),
        "ports": [{"name": "http", "containerPort": srv.port, "protocol": "TCP"}],
        # The model is on local disk by now, but loading and warming up (CUDA graphs) a 7B model still
        # takes minutes: the startup probe allows all of startup_s before liveness applies.
        "startupProbe": _probe("http", 10, max(1, math.ceil(srv.startup_s / 10))),
        "readinessProbe": _probe("http", 10, 3),
        "livenessProbe": _probe("http", 30, 5, timeout_s=10),
        "resources": _resources(cfg),
        # Engines JIT-compile kernels into caches under $HOME and the image: a writable root.
        "securityContext": _container_security(False),
        "volumeMounts": [
            {"name": "model", "mountPath": "/models", "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _default_image(engine: str) -> str:
    from sicog.config import ENGINE_IMAGES

    return ENGINE_IMAGES[engine]


def _pod_spec(cfg, role: str, model_uri: str) -> dict:
    cluster = cfg.cluster
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the engine never calls the Kubernetes API
        # No <SERVICE>_PORT variables: engines read some such names as settings (a Service named vllm breaks vLLM).
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SERVER_USER,
            "runAsGroup": SERVER_USER,
            "fsGroup": SERVER_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [_init_container(cfg, model_uri)],
        "containers": [_engine_container(cfg, role)],
        "volumes": [
            {"name": "model", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if not cluster.s3_secret and cluster.service_account:
        # No S3 Secret: the init container's store credentials come from the service account's role
        # (IRSA, EKS Pod Identity), through the store's credential chain.
        spec["serviceAccountName"] = cluster.service_account
    if cluster.node_selector:
        spec["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        spec["tolerations"] = [{k: v for k, v in t.model_dump().items() if v != ""} for t in cluster.tolerations]
    return spec


def _metadata(name: str, namespace: str, labels: dict, model_uri: str, owner: dict | None) -> dict:
    meta = {"name": name, "namespace": namespace, "labels": labels, "annotations": {MODEL_ANNOTATION: model_uri}}
    if owner:
        # blockOwnerDeletion false: deleting the Workflow must never wait on (or be refused for) the server.
        meta["ownerReferences"] = [{**{k: owner[k] for k in ("apiVersion", "kind", "name", "uid")}, "blockOwnerDeletion": False}]
    return meta


def server_manifests(cfg, *, run_id: str, role: str, model_uri: str, namespace: str, owner: dict | None = None, now: float | None = None) -> tuple[dict, dict]:
    """The server's apps/v1 Deployment and v1 Service (plain dicts, as the API takes them).

    One replica, recreated rather than surged (a second pod would need spare GPUs). The Service is a
    ClusterIP on the engine's port; clients use its IP, so no cluster DNS is needed. `owner`: the
    run's Argo Workflow ({apiVersion, kind, name, uid}); `now`: the clock the expiry is counted from."""
    name = server_name(run_id, role)
    select = _server_labels(run_id, role)
    expires = int((time.time() if now is None else now) + cfg.sample.server.ttl_s)
    labels = {**select, ENGINE_LABEL: cfg.sample.engine, EXPIRES_LABEL: str(expires)}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace, labels, model_uri, owner),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(select)},
            # The pod: also its engine (the chart's PodMonitor keeps it as a label) and the store client label.
            "template": {
                "metadata": {"labels": {**select, ENGINE_LABEL: cfg.sample.engine, CLIENT_LABEL[0]: CLIENT_LABEL[1]}},
                "spec": _pod_spec(cfg, role, model_uri),
            },
        },
    }
    port = cfg.sample.server.port
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels, model_uri, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(select),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}],
        },
    }
    return deployment, service


# --- Kubernetes access ---------------------------------------------------------------------------


# The three API groups a server's lifecycle touches (apps, core, custom), on one authenticated client:
# sicog.cluster.kube's; `KubeApi.connect()` is kube.connect() (UserError without credentials).
KubeApi = KubeClients


def _say(name: str, text: str) -> None:
    say(f"server {name}", text)


def _api_errors():
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError)


def _delete_server(api: KubeApi, name: str, namespace: str) -> bool:
    """Delete the Deployment (its pods go with it) and the Service; ones already gone are fine.
    True if anything was there."""
    from kubernetes.client.exceptions import ApiException

    found = False
    for delete in (api.apps.delete_namespaced_deployment, api.core.delete_namespaced_service):
        try:
            delete(name, namespace, propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT_S)
            found = True
        except ApiException as exc:
            if exc.status != 404:
                raise ServerError(f"server {name}: could not delete it in namespace {namespace} ({api_message(exc)}); delete it by hand") from None
    return found


# --- ownership and the backstop --------------------------------------------------------------------


def find_owner(api: KubeApi, namespace: str, who: str = "servers", backstop: str = f"the {EXPIRES_LABEL} label is their backstop") -> dict | None:
    """The Argo Workflow this process's pod belongs to ($HOSTNAME is the pod's name), as an owner
    reference for objects in `namespace`; None (with one printed line: `who` has no owner, `backstop`)
    when it cannot be found or lives in another namespace (owner references cannot cross namespaces).
    Also the owner of a run's TrainJobs (sicog.cluster.trainjob)."""
    pod_name, pod_namespace = os.environ.get("HOSTNAME", ""), job_namespace("")
    try:
        if not pod_name:
            raise LookupError("$HOSTNAME is not set")
        if pod_namespace != namespace:
            raise LookupError(f"this pod runs in namespace {pod_namespace}, the {who} in {namespace}")
        pod = api.core.read_namespaced_pod(pod_name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
        workflow = (pod.metadata.labels or {}).get(WORKFLOW_LABEL)
        if not workflow:
            raise LookupError(f"pod {pod_name} has no {WORKFLOW_LABEL} label (not an Argo Workflow pod)")
        obj = api.custom.get_namespaced_custom_object(*WORKFLOW[:2], namespace, WORKFLOW[2], workflow, _request_timeout=REQUEST_TIMEOUT_S)
    except LookupError as exc:
        say(who, f"no owner Workflow ({exc}); {backstop}")
        return None
    except _api_errors() as exc:
        say(who, f"no owner Workflow (reading pod {pod_name} or its Workflow: {api_message(exc)}); {backstop}")
        return None
    return {"apiVersion": "/".join(WORKFLOW[:2]), "kind": "Workflow", "name": workflow, "uid": obj["metadata"]["uid"]}


def _workflow_state(api: KubeApi, namespace: str, owner: dict, cache: dict) -> str:
    """ "gone", "ended" (Succeeded/Failed/Error), "live", or "unknown" (not readable: the TTL decides)."""
    name, key = owner["name"], (owner["name"], owner.get("uid"))
    if key not in cache:
        try:
            obj = api.custom.get_namespaced_custom_object(*WORKFLOW[:2], namespace, WORKFLOW[2], name, _request_timeout=REQUEST_TIMEOUT_S)
            if obj["metadata"].get("uid") != owner.get("uid"):
                cache[key] = "gone"  # a new Workflow of the same name: ours was deleted
            else:
                cache[key] = "ended" if (obj.get("status") or {}).get("phase") in ENDED_PHASES else "live"
        except _api_errors() as exc:
            cache[key] = "gone" if api_status(exc) == 404 else "unknown"
            if api_status(exc) != 404:
                say("servers", f"cannot read Workflow {name} ({api_message(exc)}); its servers live until they expire")
    return cache[key]


def _sweep_reason(obj, api: KubeApi, namespace: str, now: float, cache: dict) -> str | None:
    """Why a server object should go, or None to keep it."""
    meta = obj.metadata
    expires = (meta.labels or {}).get(EXPIRES_LABEL, "")
    if expires.isdigit() and int(expires) <= now:
        return "expired"
    for ref in meta.owner_references or []:
        if ref.kind == "Workflow" and ref.api_version == "/".join(WORKFLOW[:2]):
            state = _workflow_state(api, namespace, {"name": ref.name, "uid": ref.uid}, cache)
            if state in ("gone", "ended"):
                return f"its run's Workflow {ref.name} has {'ended' if state == 'ended' else 'gone'}"
    return None


def _server_objects(api: KubeApi, namespace: str, selector: str) -> list:
    """Deployments and Services of sampler servers matching `selector` (a Service may outlive its Deployment)."""
    kwargs = {"label_selector": selector, "_request_timeout": REQUEST_TIMEOUT_S}
    return api.apps.list_namespaced_deployment(namespace, **kwargs).items + api.core.list_namespaced_service(namespace, **kwargs).items


def _delete_all(api: KubeApi, namespace: str, reasons: dict[str, str]) -> list[str]:
    """Delete each named server (one that fails does not stop the others); ServerError at the end if any failed."""
    failed = []
    for name, reason in sorted(reasons.items()):
        try:
            _delete_server(api, name, namespace)
        except ServerError as exc:
            failed.append(str(exc))
            continue
        _say(name, f"deleted ({reason})" if reason else "deleted")
    if failed:
        raise ServerError("; ".join(failed))
    return sorted(reasons)


def sweep_servers(namespace: str = "", api: KubeApi | None = None, now: float | None = None) -> list[str]:
    """The backstop: delete every sampler server of the namespace whose expiry has passed or whose
    run's Workflow is gone or has finished; returns the names deleted (sorted)."""
    namespace = job_namespace(namespace)
    api = api or KubeApi.connect()
    now = time.time() if now is None else now
    try:
        objects = _server_objects(api, namespace, _selector({NAME_LABEL: "sicog", COMPONENT_LABEL: COMPONENT}))
    except _api_errors() as exc:
        raise ServerError(f"servers: cannot list sampler servers in namespace {namespace} ({api_message(exc)})") from None
    cache: dict[tuple, str] = {}
    doomed: dict[str, str] = {}
    for obj in objects:
        name = obj.metadata.name
        if name not in doomed and (reason := _sweep_reason(obj, api, namespace, now, cache)):
            doomed[name] = reason
    return _delete_all(api, namespace, doomed)


def delete_servers(run_id: str, namespace: str = "", api: KubeApi | None = None, role: str = "") -> list[str]:
    """Delete every server of the run, or only its server of `role` (a sampling group's exit handler);
    idempotent. Returns the names deleted."""
    namespace = job_namespace(namespace)
    api = api or KubeApi.connect()
    selector = _selector({COMPONENT_LABEL: COMPONENT, RUN_LABEL: run_label(run_id), **({ROLE_LABEL: role} if role else {})})
    try:
        names = sorted({obj.metadata.name for obj in _server_objects(api, namespace, selector)})
    except _api_errors() as exc:
        raise ServerError(f"servers of run {run_id}: cannot list them in namespace {namespace} ({api_message(exc)})") from None
    return _delete_all(api, namespace, {name: "" for name in names})


# --- launch ----------------------------------------------------------------------------------------


def _model_json(model_uri: str, name: str) -> dict | None:
    """A JSON file of the published model folder, None when it has none."""
    from sicog import store

    try:
        return json.loads(store.read_text(store.join(model_uri, name)))
    except FileNotFoundError:
        return None


def refuse_unservable(engine: str, model_uri: str) -> None:
    """TGI has no HF LLaVA architecture (model_type llava): say so before anything is deployed."""
    if engine not in SERVED_ENGINES:
        raise UserError(f"sample.engine {engine}: nothing to deploy (served engines: {', '.join(SERVED_ENGINES)})")
    if engine != "tgi":
        return
    config = _model_json(model_uri, "config.json")
    if config is None:
        raise UserError(f"model {model_uri} has no config.json: not a model folder")
    if config.get("model_type") == "llava":
        raise UserError(f"sample.engine tgi cannot serve {model_uri}: TGI has no model_type llava (HF LlavaForConditionalGeneration); use vllm or sglang")


def _delete_quietly(api: KubeApi, name: str, namespace: str) -> None:
    """Delete the server on the way out of a cancelled task; a failure is printed, not raised over the signal."""
    try:
        _delete_server(api, name, namespace)
    except ServerError as error:
        print(error, flush=True)


def _create(api: KubeApi, name: str, namespace: str, deployment: dict, service: dict) -> None:
    """Create the Service and the Deployment; an existing one (an earlier attempt of the task) is adopted."""
    from kubernetes.client.exceptions import ApiException

    for kind, create, body in (("service", api.core.create_namespaced_service, service), ("deployment", api.apps.create_namespaced_deployment, deployment)):
        try:
            create(namespace, body, _request_timeout=REQUEST_TIMEOUT_S)
            _say(name, f"{kind} created in namespace {namespace}")
        except ApiException as exc:
            if exc.status != 409:
                raise ServerError(f"server {name}: could not create its {kind} in namespace {namespace}: {api_message(exc)}") from None
            _say(name, f"{kind} exists already (an earlier attempt of this task): using it")


def _one_line(text: str | None, limit: int = 300) -> str:
    return " ".join((text or "").split())[:limit]


def _container_failure(status, init: bool) -> str | None:
    """The reason a container will not come up by waiting, or None."""
    which = f"{'init ' if init else ''}container {status.name}"
    state = status.state
    waiting = state.waiting if state else None
    if waiting is not None and waiting.reason in FATAL_WAITING:
        last = status.last_state.terminated if status.last_state else None
        exit_note = f" (last exit code {last.exit_code}{', ' + last.reason if last.reason else ''})" if last is not None else ""
        return f"{which}: {waiting.reason}{exit_note}: {_one_line(waiting.message)}".rstrip(": ")
    terminated = state.terminated if state else None
    if init and terminated is not None and terminated.exit_code != 0:
        return f"{which} failed (exit code {terminated.exit_code}): {terminated.reason or 'Error'} {_one_line(terminated.message)}".rstrip()
    return None


def _pod_summary(pod) -> str:
    """e.g. "pod x: Pending (Unschedulable: 0/4 nodes are available ...)" or "pod x: Running (vllm not ready)"."""
    status = pod.status
    notes = [f"{c.reason}: {_one_line(c.message, 160)}".rstrip(": ") for c in (status.conditions or []) if c.status == "False" and c.reason]
    for c in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = c.state.waiting if c.state else None
        if waiting is not None and waiting.reason:
            notes.append(f"{c.name} {waiting.reason}")
        elif c.state and c.state.running and not c.ready:
            notes.append(f"{c.name} starting")
    return f"pod {pod.metadata.name}: {status.phase or 'Pending'}" + (f" ({'; '.join(notes)})" if notes else "")


def _pods_state(api: KubeApi, namespace: str, selector: str) -> tuple[str | None, str]:
    """(fatal reason or None, a one-line summary) of the server's pods."""
    pods = api.core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S).items
    for pod in pods:
        for status, init in [(s, True) for s in pod.status.init_container_statuses or []] + [(s, False) for s in pod.status.container_statuses or []]:
            if (reason := _container_failure(status, init)) is not None:
                return f"pod {pod.metadata.name}: {reason}", _pod_summary(pod)
    return None, "; ".join(_pod_summary(p) for p in pods) or "no pod yet"


def _wait_ready(api: KubeApi, name: str, namespace: str, selector: str, timeout_s: float, poll_s: float) -> None:
    """Until the Deployment has a ready replica (read every poll_s, at most timeout_s: sicog.retry.poll);
    ServerError on a fatal pod state, a deletion or the deadline. Each new pod summary is said once."""
    seen = {"summary": "", "error": None}

    def ready() -> bool | None:
        try:
            deployment = api.apps.read_namespaced_deployment(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
            if ((deployment.status and deployment.status.ready_replicas) or 0) >= 1:
                return True
            fatal, summary = _pods_state(api, namespace, selector)
            seen["error"] = None
        except _api_errors() as exc:
            if api_status(exc) == 404:
                raise ServerError(f"server {name} was deleted before it was ready ({seen['summary'] or 'no pod yet'})") from None
            fatal, summary = None, seen["summary"]
            if api_message(exc) != seen["error"]:  # an API server blip must not fail the launch: retry until the deadline
                seen["error"] = api_message(exc)
                _say(name, f"cannot read its status ({seen['error']}); retrying")
        if fatal:
            raise ServerError(f"server {name} cannot start: {fatal}")
        if summary != seen["summary"]:
            _say(name, summary)
            seen["summary"] = summary
        return None

    if retry.poll(ready, every_s=poll_s, budget_s=timeout_s, what=f"server {name}") is None:
        raise ServerError(f"server {name}: not ready within the {timeout_s:g} s startup limit (sample.server.startup_s; last: {seen['summary']})")


def _endpoint(api: KubeApi, name: str, namespace: str) -> str:
    """http://<cluster IP>:<port>/v1: the Service's virtual IP works from any pod without cluster DNS."""
    try:
        service = api.core.read_namespaced_service(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
    except _api_errors() as exc:
        raise ServerError(f"server {name}: cannot read its service ({api_message(exc)})") from None
    return f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}/v1"


def launch_server(
    cfg, *, run_id: str, role: str, model_uri: str, namespace: str = "", api: KubeApi | None = None, now: float | None = None, poll_s: float = 5.0
) -> dict:
    """Deploy the engine (`cfg.sample.engine`) serving `model_uri` as `role` for run `run_id` and wait
    (at most sample.server.startup_s, reading its state every `poll_s`) until it is ready.

    Returns {"endpoint", "served_model", "name", "namespace", "image_edge"}. Refuses (UserError,
    nothing created) an engine that deploys nothing and TGI for a LLaVA; raises ServerError with one
    line, after deleting the server, when it cannot start or is not ready in time; SIGTERM / SIGINT
    while waiting delete it and exit with 128 + the signal number. Expired and ended servers of the
    namespace are swept first."""
    refuse_unservable(cfg.sample.engine, model_uri)
    name = server_name(run_id, role)
    namespace = job_namespace(namespace or cfg.cluster.namespace)
    api = api or KubeApi.connect()
    edge = model_image_edge(model_uri)
    try:
        sweep_servers(namespace, api, now)
    except ServerError as exc:  # the backstop is best effort; this run's server matters more
        say("servers", f"sweep skipped ({exc})")
    owner = find_owner(api, namespace)
    deployment, service = server_manifests(cfg, run_id=run_id, role=role, model_uri=model_uri, namespace=namespace, owner=owner, now=now)
    selector = _selector(deployment["spec"]["selector"]["matchLabels"])
    with cleanup_on_signal(lambda sig: _say(name, f"{sig}: deleting the server"), lambda: _delete_quietly(api, name, namespace)):
        try:
            _create(api, name, namespace, deployment, service)
            _wait_ready(api, name, namespace, selector, cfg.sample.server.startup_s, poll_s)
            endpoint = _endpoint(api, name, namespace)
        except ServerError as exc:
            _delete_server(api, name, namespace)
            raise ServerError(f"{exc}; deleted it") from None
        except Exception:  # a bug or an unexpected API answer: no GPUs left held either
            _delete_server(api, name, namespace)
            raise
    _say(name, f"ready at {endpoint} (model {role}, engine {cfg.sample.engine})")
    return {"endpoint": endpoint, "served_model": role, "name": name, "namespace": namespace, "image_edge": edge}
