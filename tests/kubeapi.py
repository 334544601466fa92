"""A small fake Kubernetes API server with a tiny Training Operator, for the PyTorchJob tests.

Serves, on 127.0.0.1, what the kubeflow-training SDK's TrainingClient calls for PyTorchJobs: create /
get / list / delete under /apis/kubeflow.org/v1, plus the pod list and pod log of /api/v1. Like the
real API server it wants the kubeconfig's bearer token, answers 404 / 409 with Status objects and
refuses (422) a job that does not validate against the operator's CRD schema (the vendored copy in
schemas/). Its "operator" runs each new job's Master container command as a local process: env from
the container (secretKeyRef resolved from the Secrets it holds; the test process's own AWS_* and
SICOG_* variables are not passed on, so credentials arrive only through the Secret), plus what the
real operator adds (MASTER_ADDR/PORT, WORLD_SIZE, RANK, PET_NNODES=1, PET_NPROC_PER_NODE,
PET_NODE_RANK=0, PET_MASTER_ADDR=127.0.0.1, PET_MASTER_PORT=a free port; TMPDIR: the job's own
folder, as a pod has its own /tmp). It sets the conditions
Created -> Running -> Succeeded or Failed (by exit status) with the operator's reasons and messages,
and the Master's replica status. Deleting a job terminates its process group, as the kubelet would.
`hold` replaces the command by a sleep: a job that runs until deleted.

It serves Kubeflow Trainer v2 TrainJobs too (create / get / list / delete under
/apis/trainer.kubeflow.org/v1alpha1): a body that does not validate against Trainer v2.2's CRD
schema (schemas/) gets 422, and so does what the trainer's admission webhook refuses (an unknown
ClusterTrainingRuntime: `runtimes` holds the known ones, default torch-distributed; reserved PET_*
env; runtimePatches naming a job or container the runtime lacks, or env for the `node` container).
Its "controller" runs one local process per node (numNodes), each the trainer's command with what
the torch plugin adds (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK = the node's index,
PET_MASTER_ADDR=127.0.0.1, PET_MASTER_PORT = a free port; TMPDIR: the node's own folder), listed as
pods with the JobSet's labels. Like the real controller it sets no condition while running (only
the `node` job's jobsStatus counts), then `Complete` (AllJobsCompleted) when every node exits 0, or
`Failed` (FailedJobs, naming the first failed job) when one fails (the others are terminated), or
`Failed` (DeadlineExceeded) past activeDeadlineSeconds.

It also serves what sicog.cluster.serving's inference servers need: apps/v1 Deployments and v1
Services (create / get / list by label selector / delete; bodies must pass kubernetes-validate
strict for Kubernetes 1.30, else 422), pods (list by label selector, get by name; tests add pods of
their own, e.g. the launch task's, with `add_pod`) and argoproj.io/v1alpha1 Workflows (get; tests
add them with `add_workflow` or `workflows[(namespace, name)]`). Each Service gets a cluster IP of
its own on loopback (127.0.0.2, .3, ...: all of 127/8 is loopback on Linux). Its "kubelet" runs a new
Deployment's one pod: the init containers' commands as local processes (the `sicog` console script
of this venv; volume mount paths rewritten to the fake pod's folders, except /tmp in arguments: a
test's local store folder is there), then, in place of the engine
container, tests/engine.py (the stand-in engine: transformers serve behind the engine's flags and
`n` semantics) on the selecting Service's IP and the container port. The pod reports what happens
the way a kubelet does: PodInitializing, Init:CrashLoopBackOff (a failed init command),
CreateContainerConfigError (a missing Secret key), CrashLoopBackOff (the engine exited),
ImagePullBackOff (an image whose name contains one of `unpullable`, default "missing"), and ready
(readyReplicas 1) once the readiness probe's /health answers 200. `schedulable = False` leaves new
pods Pending (Unschedulable), with no process. Deleting a Deployment ends its pod's processes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import kubernetes_validate
import yaml

CRD = Path(__file__).parent / "schemas" / "kubeflow.org_pytorchjobs.yaml"
TRAINJOB_CRD = Path(__file__).parent / "schemas" / "trainer.kubeflow.org_trainjobs.yaml"
TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
RESERVED_TORCH_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
WEBHOOK = 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request'
JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
HOLD = [sys.executable, "-c", "import time; time.sleep(3600)"]
DEPLOYMENTS = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments(?:/([^/]+))?$")
SERVICES = re.compile(r"^/api/v1/namespaces/([^/]+)/services(?:/([^/]+))?$")
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
WORKFLOWS = re.compile(r"^/apis/argoproj\.io/v1alpha1/namespaces/([^/]+)/workflows(?:/([^/]+))?$")
KUBE_VERSION = "1.30.0"
ENGINE = Path(__file__).parent / "engine.py"
# Arguments under these mounts are left alone: a test's local store folder lives under the host's /tmp,
# and stands for a store that the pod reaches as it is (env values such as HOME=/tmp are rewritten).
ARGS_KEEP = ("/tmp",)


@functools.lru_cache(maxsize=1)
def crd_schema() -> dict:
    """The CRD's openAPIV3Schema of kubeflow.org/v1 PyTorchJob (read once: 220 KB of YAML)."""
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


@functools.lru_cache(maxsize=1)
def trainjob_schema() -> dict:
    """The CRD's openAPIV3Schema of trainer.kubeflow.org/v1alpha1 TrainJob (Kubeflow Trainer v2.2.1)."""
    crd = yaml.load(TRAINJOB_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"]


def pruned(value, schema: dict, path: str = "") -> list[str]:
    """Fields of `value` that the schema does not declare: the API server would silently drop them
    (kubectl's --validate=strict refuses them). jsonschema alone lets them through."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict) and "properties" in schema:
        found = []
        for key, item in value.items():
            if key in schema["properties"]:
                found += pruned(item, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}")
        return found
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [p for key, item in value.items() for p in pruned(item, schema["additionalProperties"], f"{path}.{key}")]
    if isinstance(value, list) and "items" in schema:
        return [p for i, item in enumerate(value) for p in pruned(item, schema["items"], f"{path}[{i}]")]
    return []


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_pod(job: str, index: int) -> str:
    """The pod of a TrainJob's node `index`: the JobSet's Job `<job>-node-0`, completion index `index`."""
    return f"{job}-node-0-{index}-{hashlib.sha256(f'{job}/{index}'.encode()).hexdigest()[:5]}"


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


def _matches(labels: dict, selector: str) -> bool:
    """Equality-based label selectors (`a=b,c=d`), the kind sicog sends."""
    wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
    return all((labels or {}).get(k) == v for k, v in wanted.items())


def _waiting(name: str, image: str, reason: str, message: str = "", restarts: int = 0, last: dict | None = None) -> dict:
    status = {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": False,
        "restartCount": restarts,
        "state": {"waiting": {"reason": reason, **({"message": message} if message else {})}},
    }
    if last:
        status["lastState"] = {"terminated": last}
    return status


def _running(name: str, image: str, ready: bool) -> dict:
    return {
        "name": name,
        "image": image,
        "imageID": f"sha256:{uuid.uuid4().hex}",
        "ready": ready,
        "restartCount": 0,
        "started": True,
        "state": {"running": {"startedAt": _now()}},
    }


def _terminated(code: int, reason: str) -> dict:
    return {"exitCode": code, "reason": reason, "startedAt": _now(), "finishedAt": _now()}


class FakeKube:
    def __init__(self, secrets: dict[str, dict[str, str]] | None = None, token: str = "sicog-test-token"):
        self.secrets = secrets or {}
        self.token = token
        self.hold = False
        self.jobs: dict[tuple[str, str], dict] = {}
        self.created: list[dict] = []  # every accepted job body, in order
        self.deleted: list[str] = []
        self.envs: dict[str, dict[str, str]] = {}  # job name -> the Master process's environment
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.lock = threading.Lock()
        self.validator = jsonschema.Draft7Validator(crd_schema())
        # TrainJobs: (namespace, name) -> object; their node processes, environments and pods.
        self.trainjobs: dict[tuple[str, str], dict] = {}
        self.trainjob_validator = jsonschema.Draft7Validator(trainjob_schema())
        self.runtimes = {"torch-distributed": {"node": {"node"}}}  # ClusterTrainingRuntime -> its jobs -> their containers
        self.node_procs: dict[str, list[subprocess.Popen]] = {}
        self.node_envs: dict[str, list[dict[str, str]]] = {}
        self.workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fake-kube-{uuid.uuid4().hex[:8]}"
        self._server: ThreadingHTTPServer | None = None
        # Deployments, Services, pods, Workflows: (namespace, name) -> object.
        self.deployments: dict[tuple[str, str], dict] = {}
        self.services: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.workflows: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every call, in order
        self.unpullable: tuple[str, ...] = ("missing",)
        self.schedulable = True
        self.pod_procs: dict[tuple[str, str], list[subprocess.Popen]] = {}  # pod -> its processes
        self.pod_logs: dict[str, Path] = {}
        self.pod_owner: dict[tuple[str, str], tuple[str, str]] = {}  # pod -> its Deployment
        self._next_ip = 2

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "FakeKube":
        self.workdir.mkdir(parents=True)
        kube = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                kube._handle(self, "GET")

            def do_POST(self):
                kube._handle(self, "POST")

            def do_DELETE(self):
                kube._handle(self, "DELETE")

            def do_PATCH(self):
                kube._handle(self, "PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        with self.lock:
            procs = list(self.procs.values()) + [p for ps in self.pod_procs.values() for p in ps] + [p for ps in self.node_procs.values() for p in ps]
        for proc in procs:
            self._terminate(proc)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def kubeconfig(self, path: Path, namespace: str = "sicog") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": self.token}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
                }
            )
        )
        return path

    # --- HTTP ------------------------------------------------------------------------------------

    def _reply(self, handler, code: int, body, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, handler, method: str) -> None:
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(handler, 401, _status(401, "Unauthorized", "Unauthorized"))
        url = urlparse(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = None
        length = int(handler.headers.get("Content-Length") or 0)
        if method == "POST":
            body = json.loads(handler.rfile.read(length) or b"{}")
        elif length:  # a DELETE's DeleteOptions: read, so that the connection stays in step
            handler.rfile.read(length)
        self.requests.append((method, url.path))
        if m := JOBS.match(url.path):
            code, reply = self._jobs(method, m.group(1), m.group(2), body)
        elif m := TRAINJOBS.match(url.path):
            code, reply = self._trainjobs(method, m.group(1), m.group(2), body)
        elif (m := PODS.match(url.path)) and method == "GET":
            code, reply = 200, self._pods(m.group(1), query.get("labelSelector", ""))
        elif (m := POD.match(url.path)) and method == "GET":
            code, reply = self._get(self.pods, "pods", m.group(1), m.group(2))
        elif m := DEPLOYMENTS.match(url.path):
            code, reply = self._objects(self.deployments, "apps/v1", "Deployment", "deployments.apps", method, m.group(1), m.group(2), body, query)
        elif m := SERVICES.match(url.path):
            code, reply = self._objects(self.services, "v1", "Service", "services", method, m.group(1), m.group(2), body, query)
        elif (m := WORKFLOWS.match(url.path)) and method == "GET" and m.group(2):
            code, reply = self._get(self.workflows, "workflows.argoproj.io", m.group(1), m.group(2))
        elif (m := LOG.match(url.path)) and method == "GET":
            code, reply = self._log(m.group(2), int(query["tailLines"]) if "tailLines" in query else None)
            if code == 200:
                return self._reply(handler, 200, reply, "text/plain")
        else:
            code, reply = 404, _status(404, "NotFound", f"the server could not find the requested resource ({url.path})")
        self._reply(handler, code, reply)

    def _jobs(self, method: str, namespace: str, name: str | None, body: dict | None):
        with self.lock:
            if method == "GET" and name is None:
                items = [job for (ns, _), job in self.jobs.items() if ns == namespace]
                return 200, {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJobList", "metadata": {}, "items": items}
            if method == "POST" and name is None:
                return self._create(namespace, body)
            key = (namespace, name)
            if key not in self.jobs:
                return 404, _status(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
            if method == "GET":
                return 200, self.jobs[key]
            if method == "DELETE":
                job = self.jobs.pop(key)
                self.deleted.append(name)
                proc = self.procs.get(name)
                if proc is not None:
                    threading.Thread(target=self._terminate, args=(proc,), daemon=True).start()
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": "kubeflow.org", "kind": "pytorchjobs", "uid": job["metadata"]["uid"]},
                }
        return 405, _status(405, "MethodNotAllowed", method)

    def _create(self, namespace: str, body: dict):
        errors = sorted(self.validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            where = ".".join(str(p) for p in errors[0].absolute_path)
            return 422, _status(422, "Invalid", f'PyTorchJob.kubeflow.org "{body.get("metadata", {}).get("name")}" is invalid: {where}: {errors[0].message}')
        name = body["metadata"]["name"]
        if (namespace, name) in self.jobs:
            return 409, _status(409, "AlreadyExists", f'pytorchjobs.kubeflow.org "{name}" already exists')
        job = json.loads(json.dumps(body))
        job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion="1", creationTimestamp=_now())
        job["status"] = {"conditions": [], "replicaStatuses": {}}
        self.jobs[(namespace, name)] = job
        self.created.append(job)
        threading.Thread(target=self._operate, args=(namespace, name), daemon=True).start()
        return 201, job

    def _pods(self, namespace: str, selector: str) -> dict:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
        items = []
        with self.lock:
            items += [
                json.loads(json.dumps(pod)) for (ns, _), pod in self.pods.items() if ns == namespace and _matches(pod["metadata"].get("labels"), selector)
            ]
            for (ns, name), job in self.jobs.items():
                labels = {
                    "training.kubeflow.org/job-name": name,
                    "training.kubeflow.org/job-role": "master",
                    "training.kubeflow.org/replica-type": "master",
                    "training.kubeflow.org/replica-index": "0",
                }
                if ns == namespace and name in self.procs and all(labels.get(k) == v for k, v in wanted.items()):
                    proc = self.procs[name]
                    phase = "Running" if proc.poll() is None else ("Succeeded" if proc.returncode == 0 else "Failed")
                    items.append(
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": {"name": f"{name}-master-0", "namespace": ns, "labels": labels},
                            "status": {"phase": phase},
                        }
                    )
            for (ns, name), job in self.trainjobs.items():
                for i, proc in enumerate(self.node_procs.get(name, [])):
                    labels = {
                        "jobset.sigs.k8s.io/jobset-name": name,
                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                        "batch.kubernetes.io/job-completion-index": str(i),
                        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer",
                    }
                    if ns == namespace and all(labels.get(k) == v for k, v in wanted.items()):
                        phase = "Running" if proc.poll() is None else ("Succeeded" if proc.returncode == 0 else "Failed")
                        items.append(
                            {
                                "apiVersion": "v1",
                                "kind": "Pod",
                                "metadata": {"name": _node_pod(name, i), "namespace": ns, "labels": labels},
                                "status": {"phase": phase},
                            }
                        )
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}

    def _log(self, pod: str, tail: int | None):
        path = self.logs.get(pod.removesuffix("-master-0")) or self.pod_logs.get(pod)
        if path is None:
            return 404, _status(404, "NotFound", f'pods "{pod}" not found')
        lines = path.read_text(errors="replace").splitlines(keepends=True)
        return 200, "".join(lines[-tail:] if tail else lines)

    # --- the operator ----------------------------------------------------------------------------

    def _condition(self, key, ctype: str, reason: str, message: str) -> None:
        job = self.jobs.get(key)
        if job is None:
            return
        conditions = job["status"]["conditions"]
        if ctype in ("Succeeded", "Failed"):
            for c in conditions:
                if c["type"] == "Running":
                    c["status"] = "False"
        conditions.append({"type": ctype, "status": "True", "reason": reason, "message": message, "lastUpdateTime": _now(), "lastTransitionTime": _now()})

    def _env(self, container: dict, nproc: str, total: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SICOG_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the image's torchrun
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self.secrets[ref["name"]][ref["key"]]  # KeyError: CreateContainerConfigError
        port = str(_free_port())
        env.update(
            PYTHONUNBUFFERED="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE=str(total * int(nproc)),
            RANK="0",
            PET_NNODES=str(total),
            PET_NPROC_PER_NODE=nproc,
            PET_NODE_RANK="0",
            PET_MASTER_ADDR="127.0.0.1",
            PET_MASTER_PORT=port,
        )
        return env

    def _operate(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self.lock:
            job = self.jobs.get(key)
            if job is None:  # deleted before the operator saw it
                return
            self._condition(key, "Created", "PyTorchJobCreated", f"PyTorchJob {namespace}/{name} is created.")
            spec = job["spec"]
            container = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
            try:
                env = self._env(container, spec.get("nprocPerNode", "1"), 1)  # only the Master runs here: one node
            except KeyError as exc:
                self._condition(key, "Failed", "PyTorchJobFailed", f"PyTorchJob {namespace}/{name}: secret key {exc} not found")
                return
            env["TMPDIR"] = str(self.workdir / name / "tmp")  # the pod's own /tmp (an emptyDir): where `sicog train` stages
            Path(env["TMPDIR"]).mkdir(parents=True)
            self.envs[name] = env
            self.logs[name] = log = self.workdir / f"{name}.log"
            argv = HOLD if self.hold else container["command"] + container.get("args", [])
            with open(log, "wb") as out:
                proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
            self.procs[name] = proc
            job["status"]["replicaStatuses"] = {"Master": {"active": 1}}
            job["status"]["startTime"] = _now()
            self._condition(key, "Running", "PyTorchJobRunning", f"PyTorchJob {namespace}/{name} is running.")
        code = proc.wait()
        with self.lock:
            if key not in self.jobs:  # deleted meanwhile
                return
            job["status"]["completionTime"] = _now()
            if code == 0:
                job["status"]["replicaStatuses"] = {"Master": {"succeeded": 1}}
                self._condition(key, "Succeeded", "PyTorchJobSucceeded", f"PyTorchJob {namespace}/{name} is successfully completed.")
            else:
                job["status"]["replicaStatuses"] = {"Master": {"failed": 1}}
                self._condition(
                    key, "Failed", "PyTorchJobFailed", f"PyTorchJob {namespace}/{name} is failed because 1 Master replica(s) failed (exit code {code})."
                )

    # --- TrainJobs and their controller ---------------------------------------------------------------

    def _trainjobs(self, method: str, namespace: str, name: str | None, body: dict | None):
        with self.lock:
            if method == "GET" and name is None:
                items = [job for (ns, _), job in self.trainjobs.items() if ns == namespace]
                return 200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "metadata": {}, "items": items}
            if method == "POST" and name is None:
                return self._create_trainjob(namespace, body)
            key = (namespace, name)
            if key not in self.trainjobs:
                return 404, _status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
            if method == "GET":
                return 200, self.trainjobs[key]
            if method == "DELETE":  # the JobSet, its Jobs and pods go with it (the garbage collector's work)
                job = self.trainjobs.pop(key)
                self.deleted.append(name)
                for proc in self.node_procs.get(name, []):
                    threading.Thread(target=self._terminate, args=(proc,), daemon=True).start()
                return 200, job
        return 405, _status(405, "MethodNotAllowed", method)

    def _admit(self, body: dict) -> str | None:
        """What the CRD's CEL rules and the trainer's validating webhook refuse, or None."""
        name, spec = body["metadata"].get("name", ""), body.get("spec") or {}
        if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
            return "metadata.name must match RFC 1035 DNS label format and be no more than 63 characters"
        ref = spec["runtimeRef"]
        runtime = self.runtimes.get(ref["name"]) if ref.get("kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime" else None
        if runtime is None:
            return (
                f'{WEBHOOK}: spec.runtimeRef: Invalid value: clustertrainingruntimes.trainer.kubeflow.org "{ref["name"]}" not found: '
                "specified clusterTrainingRuntime must be created before the TrainJob is created"
            )
        reserved = sorted(RESERVED_TORCH_ENV & {e["name"] for e in (spec.get("trainer") or {}).get("env", [])})
        if reserved:
            return f"{WEBHOOK}: spec.trainer.env: Invalid value: must not have reserved envs, invalid envs configured: {reserved}"
        for patch in spec.get("runtimePatches", []):
            if "/" not in patch["manager"]:
                return f"{WEBHOOK}: spec.runtimePatches.manager: Invalid value: {patch['manager']!r}: must be a domain-prefixed path"
            for job in ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec", {}).get("replicatedJobs", []):
                if job["name"] not in runtime:
                    return f"{WEBHOOK}: spec.runtimePatches: must not have replicated job that doesn't exist in the runtime job template"
                pod = (((job.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
                for c in pod.get("containers", []):
                    if c["name"] not in runtime[job["name"]]:
                        return f"{WEBHOOK}: spec.runtimePatches: must not have container that doesn't exist in the runtime job {job['name']}"
                    if c.get("env") and c["name"] == "node":
                        return f"{WEBHOOK}: spec.runtimePatches: must not have envs for the dataset-initializer, model-initializer, node containers"
        return None

    def _create_trainjob(self, namespace: str, body: dict):
        name = body.get("metadata", {}).get("name")
        errors = sorted(self.trainjob_validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            where = ".".join(str(p) for p in errors[0].absolute_path)
            return 422, _status(422, "Invalid", f'TrainJob.trainer.kubeflow.org "{name}" is invalid: {where}: {errors[0].message}')
        refused = self._admit(body)
        if refused:
            return 422, _status(422, "Invalid", refused)
        if (namespace, name) in self.trainjobs:
            return 409, _status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already exists')
        job = json.loads(json.dumps(body))
        job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion="1", creationTimestamp=_now(), generation=1)
        job["spec"].setdefault("suspend", False)  # the CRD's defaults
        job["spec"].setdefault("managedBy", "trainer.kubeflow.org/trainjob-controller")
        job["status"] = {}
        self.trainjobs[(namespace, name)] = job
        self.created.append(job)
        threading.Thread(target=self._control, args=(namespace, name), daemon=True).start()
        return 201, job

    def _finish(self, key, ctype: str, reason: str, message: str, counts: dict) -> None:
        job = self.trainjobs.get(key)
        if job is not None:
            job["status"]["conditions"] = [
                {"type": ctype, "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now(), "observedGeneration": 1}
            ]
            job["status"]["jobsStatus"] = [{"name": "node", "ready": 0, "succeeded": 0, "failed": 0, "active": 0, "suspended": 0, **counts}]

    def _control(self, namespace: str, name: str) -> None:
        """Run the TrainJob's nodes as local processes, the way the torch runtime would, and report their end."""
        key = (namespace, name)
        with self.lock:
            job = self.trainjobs.get(key)
            if job is None:
                return
            trainer, deadline = job["spec"]["trainer"], job["spec"].get("activeDeadlineSeconds")
            nodes, nproc = trainer.get("numNodes", 1), trainer.get("numProcPerNode", 1)
            port = str(_free_port())
            envs = []
            for i in range(nodes):
                try:
                    env = self._env({"env": trainer.get("env", [])}, str(nproc), nodes)
                except KeyError as exc:  # a missing Secret key: the pod never starts (CreateContainerConfigError)
                    self._finish(key, "Failed", "FailedJobs", f"secret key {exc} not found (first failed job: {name}-node-0)", {"failed": 1})
                    return
                for var in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"):  # the Training Operator's, not the torch plugin's
                    env.pop(var)
                tmp = self.workdir / name / job["metadata"]["uid"][:8] / f"node-{i}" / "tmp"  # the pod's own /tmp (an emptyDir)
                tmp.mkdir(parents=True)
                env.update(
                    PET_NNODES=str(nodes),
                    PET_NPROC_PER_NODE=str(nproc),
                    PET_NODE_RANK=str(i),
                    PET_MASTER_ADDR="127.0.0.1",
                    PET_MASTER_PORT=port,
                    JOB_COMPLETION_INDEX=str(i),
                    TMPDIR=str(tmp),
                )
                envs.append(env)
            self.node_envs[name] = envs
            argv = HOLD if self.hold else trainer.get("command", []) + trainer.get("args", [])
            procs = []
            for i, env in enumerate(envs):
                self.pod_logs[_node_pod(name, i)] = log = self.workdir / name / job["metadata"]["uid"][:8] / f"node-{i}.log"
                with open(log, "wb") as out:
                    procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True))
            self.node_procs[name] = procs
            job["status"] = {"jobsStatus": [{"name": "node", "ready": 1, "succeeded": 0, "failed": 0, "active": 1, "suspended": 0}]}
        started = time.monotonic()
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            late = deadline is not None and time.monotonic() - started > deadline
            if failed or late or all(code == 0 for code in codes):
                break
            time.sleep(0.1)
        for proc in procs:  # a failed Job's (or a late TrainJob's) other pods are terminated
            self._terminate(proc)
        with self.lock:
            if key not in self.trainjobs:  # deleted meanwhile
                return
            if late:
                self._finish(key, "Failed", "DeadlineExceeded", "TrainJob exceeded its active deadline", {"failed": 1})
            elif failed:
                self._finish(key, "Failed", "FailedJobs", f"jobset failed due to one or more job failures (first failed job: {name}-node-0)", {"failed": 1})
            else:
                self._finish(key, "Complete", "AllJobsCompleted", "jobset completed successfully", {"succeeded": 1})

    @staticmethod
    def _terminate(proc: subprocess.Popen) -> None:
        """SIGTERM to the process group, SIGKILL after a grace period (the kubelet's way)."""
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def wait_gone(self, name: str, timeout: float = 20) -> bool:
        """True once the job (PyTorchJob or TrainJob) is deleted and its processes have ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                procs = [p for p in [self.procs.get(name), *self.node_procs.get(name, [])] if p is not None]
                gone = all(n != name for _, n in [*self.jobs, *self.trainjobs])
            if gone and all(p.poll() is not None for p in procs):
                return True
            time.sleep(0.1)
        return False

    # --- Deployments, Services, pods, Workflows -----------------------------------------------------

    def add_pod(self, name: str, labels: dict[str, str], namespace: str = "sicog") -> dict:
        """A pod that exists without a Deployment (e.g. the pipeline task's own pod)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "uid": str(uuid.uuid4())},
            "spec": {"containers": [{"name": "main", "image": "sicog"}]},
            "status": {"phase": "Running"},
        }
        with self.lock:
            self.pods[(namespace, name)] = pod
        return pod

    def add_workflow(self, name: str, namespace: str = "sicog", phase: str = "Running") -> dict:
        workflow = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "status": {"phase": phase},
        }
        with self.lock:
            self.workflows[(namespace, name)] = workflow
        return workflow

    def _get(self, store: dict, resource: str, namespace: str, name: str):
        with self.lock:
            obj = store.get((namespace, name))
            return (200, json.loads(json.dumps(obj))) if obj is not None else (404, _status(404, "NotFound", f'{resource} "{name}" not found'))

    def _objects(self, store: dict, api_version: str, kind: str, resource: str, method: str, namespace: str, name: str | None, body: dict | None, query: dict):
        if method == "GET" and name is None:
            with self.lock:
                items = [
                    json.loads(json.dumps(o))
                    for (ns, _), o in store.items()
                    if ns == namespace and _matches(o["metadata"].get("labels"), query.get("labelSelector", ""))
                ]
            return 200, {"apiVersion": api_version, "kind": f"{kind}List", "metadata": {"resourceVersion": "1"}, "items": items}
        if method == "POST" and name is None:
            return self._create_object(store, kind, resource, namespace, body)
        if method == "GET":
            return self._get(store, resource, namespace, name)
        if method == "DELETE":
            with self.lock:
                obj = store.pop((namespace, name), None)
                if obj is None:
                    return 404, _status(404, "NotFound", f'{resource} "{name}" not found')
                self.deleted.append(name)
                procs = []
                if kind == "Deployment":  # its ReplicaSet's pods go with it (the garbage collector's work)
                    for key in [k for k, owner in self.pod_owner.items() if owner == (namespace, name) and k in self.pods]:
                        self.pods.pop(key)
                        procs += self.pod_procs.get(key, [])
            for proc in procs:
                threading.Thread(target=self._terminate, args=(proc,), daemon=True).start()
            if kind == "Deployment":  # apps/v1 answers a Status; a Service's DELETE answers the object
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": "apps", "kind": "deployments", "uid": obj["metadata"]["uid"]},
                }
            return 200, obj
        return 405, _status(405, "MethodNotAllowed", method)

    def _create_object(self, store: dict, kind: str, resource: str, namespace: str, body: dict):
        name = (body.get("metadata") or {}).get("name")
        try:
            kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            return 422, _status(422, "Invalid", f'{kind} "{name}" is invalid: {where}: {exc.message}')
        with self.lock:
            if (namespace, name) in store:
                return 409, _status(409, "AlreadyExists", f'{resource} "{name}" already exists')
            obj = json.loads(json.dumps(body))
            obj["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion="1", creationTimestamp=_now(), generation=1)
            if kind == "Service":
                ip = f"127.0.0.{self._next_ip}"
                self._next_ip += 1
                obj["spec"].update(clusterIP=ip, clusterIPs=[ip])
                obj["status"] = {"loadBalancer": {}}
            else:
                obj["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1}
            store[(namespace, name)] = obj
            self.created.append(obj)
        if kind == "Deployment":
            threading.Thread(target=self._kubelet, args=(namespace, name), daemon=True).start()
        return 201, obj

    # --- the kubelet -------------------------------------------------------------------------------

    def _pod_env(self, container: dict, rewrite) -> dict[str, str]:
        """The container's env (secretKeyRef from the held Secrets; KeyError: CreateContainerConfigError)
        over the test's environment minus AWS_* / SICOG_* (credentials only through the Secret)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SICOG_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the image's `sicog`
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = rewrite(var["value"])
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                if ref["key"] not in self.secrets.get(ref["name"], {}):
                    raise KeyError(f"couldn't find key {ref['key']} in Secret {ref['name']}")
                env[var["name"]] = self.secrets[ref["name"]][ref["key"]]
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def _rewriter(container: dict, pod_dir: Path, skip: tuple[str, ...] = ()):
        """Paths under the container's volume mounts (but `skip`) -> the fake pod's folder of that volume."""
        mounts = sorted(
            ((m["mountPath"], pod_dir / "volumes" / m["name"]) for m in container.get("volumeMounts", []) if m["mountPath"] not in ("/dev/shm", *skip)),
            key=lambda m: -len(m[0]),
        )
        for _, local in mounts:
            local.mkdir(parents=True, exist_ok=True)

        def rewrite(value: str) -> str:
            for mount, local in mounts:
                if value == mount or value.startswith(mount + "/"):
                    return str(local) + value[len(mount) :]
            return value

        return rewrite

    def _set_pod(self, key, *, phase: str | None = None, init: list | None = None, main: list | None = None, conditions: list | None = None) -> bool:
        """Update the pod's status; False if the pod (its Deployment) is gone."""
        with self.lock:
            pod = self.pods.get(key)
            if pod is None:
                return False
            status = pod["status"]
            if phase:
                status["phase"] = phase
            if init is not None:
                status["initContainerStatuses"] = init
            if main is not None:
                status["containerStatuses"] = main
            if conditions is not None:
                status["conditions"] = [
                    {"type": t, "status": s, **({"reason": r} if r else {}), **({"message": m} if m else {}), "lastTransitionTime": _now()}
                    for t, s, r, m in conditions
                ]
            return True

    def _set_ready(self, deployment_key, key, image: str, name: str, ready: bool) -> None:
        with self.lock:
            deployment = self.deployments.get(deployment_key)
            if deployment is None or key not in self.pods:
                return
            status = deployment["status"]
            status["unavailableReplicas"] = 0 if ready else 1
            for field in ("readyReplicas", "availableReplicas"):  # the API leaves zero counts out
                if ready:
                    status[field] = 1
                else:
                    status.pop(field, None)
        self._set_pod(
            key,
            phase="Running",
            main=[_running(name, image, ready)],
            conditions=[("PodScheduled", "True", "", ""), ("Initialized", "True", "", ""), ("Ready", "True" if ready else "False", "", "")],
        )

    def _run(self, key, argv: list[str], env: dict, pod_dir: Path, log: Path) -> subprocess.Popen | None:
        with self.lock:
            if key not in self.pods:  # deleted meanwhile
                return None
            with open(log, "ab") as out:
                proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=pod_dir, start_new_session=True)
            self.pod_procs.setdefault(key, []).append(proc)
        return proc

    def _kubelet(self, namespace: str, deployment_name: str) -> None:
        """Schedule and run the Deployment's one pod, reporting each step in the pod's status."""
        with self.lock:
            deployment = self.deployments.get((namespace, deployment_name))
            if deployment is None:
                return
            template = deployment["spec"]["template"]
            pod_name = f"{deployment_name}-{uuid.uuid4().hex[:10]}-{uuid.uuid4().hex[:5]}"
            key = (namespace, pod_name)
            spec = template["spec"]
            self.pod_owner[key] = (namespace, deployment_name)
            self.pods[key] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": namespace, "labels": dict(template["metadata"]["labels"]), "uid": str(uuid.uuid4())},
                "spec": json.loads(json.dumps(spec)),
                "status": {"phase": "Pending"},
            }
        if not self.schedulable:
            self._set_pod(key, conditions=[("PodScheduled", "False", "Unschedulable", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")])
            return
        pod_dir = self.workdir / "pods" / pod_name
        pod_dir.mkdir(parents=True)
        self.pod_logs[pod_name] = log = pod_dir / "log"
        log.touch()
        inits, main = spec.get("initContainers", []), spec["containers"][0]
        pending = [_waiting(c["name"], c["image"], "PodInitializing") for c in inits]
        self._set_pod(
            key,
            init=pending,
            main=[_waiting(main["name"], main["image"], "PodInitializing")],
            conditions=[("PodScheduled", "True", "", ""), ("Initialized", "False", "ContainersNotInitialized", "")],
        )
        done: list[dict] = []
        for i, c in enumerate(inits):
            if not self._start_init(key, c, pod_dir, log, done, pending[i + 1 :], main):
                return
        self._run_engine(key, (namespace, deployment_name), main, template["metadata"]["labels"], pod_dir, log, done)

    def _unpullable(self, image: str) -> bool:
        return any(part in image for part in self.unpullable)

    def _start_init(self, key, c: dict, pod_dir: Path, log: Path, done: list, later: list, main: dict) -> bool:
        """Run one init container to its end; False (status set) if the pod stops here."""
        main_waiting = [_waiting(main["name"], main["image"], "PodInitializing")]
        if self._unpullable(c["image"]):
            self._set_pod(key, init=done + [_waiting(c["name"], c["image"], "ImagePullBackOff", f'Back-off pulling image "{c["image"]}"')] + later)
            return False
        rewrite = self._rewriter(c, pod_dir)
        try:
            env = self._pod_env(c, rewrite)
        except KeyError as exc:
            self._set_pod(key, init=done + [_waiting(c["name"], c["image"], "CreateContainerConfigError", exc.args[0])] + later)
            return False
        self._set_pod(key, phase="Pending", init=done + [_running(c["name"], c["image"], False)] + later, main=main_waiting)
        argv = [self._rewriter(c, pod_dir, ARGS_KEEP)(a) for a in c.get("command", []) + c.get("args", [])]
        proc = self._run(key, argv, env, pod_dir, log)
        if proc is None:
            return False
        code = proc.wait()
        if code != 0:  # the kubelet restarts it with a back-off: Init:CrashLoopBackOff
            self._set_pod(
                key,
                init=done
                + [
                    _waiting(
                        c["name"],
                        c["image"],
                        "CrashLoopBackOff",
                        f"back-off 10s restarting failed container={c['name']}",
                        restarts=1,
                        last=_terminated(code, "Error"),
                    )
                ]
                + later,
            )
            return False
        done.append(
            {"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "restartCount": 0, "state": {"terminated": _terminated(0, "Completed")}}
        )
        return True

    def _service_ip(self, namespace: str, labels: dict, timeout: float = 60) -> str | None:
        """The cluster IP of the Service that selects the pod: where its stand-in listens (loopback has no pod network)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for (ns, _), svc in self.services.items():
                    selector = svc["spec"].get("selector") or {}
                    if ns == namespace and selector and all(labels.get(k) == v for k, v in selector.items()):
                        return svc["spec"]["clusterIP"]
            time.sleep(0.1)
        return None

    def _run_engine(self, key, deployment_key, c: dict, labels: dict, pod_dir: Path, log: Path, inits: list) -> None:
        """The stand-in engine in place of the engine container; ready once its readiness probe answers."""
        image = c["image"]
        if self._unpullable(image):
            self._set_pod(
                key,
                init=inits,
                main=[_waiting(c["name"], image, "ImagePullBackOff", f'Back-off pulling image "{image}"')],
                conditions=[("PodScheduled", "True", "", ""), ("Initialized", "True", "", ""), ("Ready", "False", "ContainersNotReady", "")],
            )
            return
        rewrite = self._rewriter(c, pod_dir)
        try:
            env = self._pod_env(c, rewrite)
        except KeyError as exc:
            self._set_pod(key, init=inits, main=[_waiting(c["name"], image, "CreateContainerConfigError", exc.args[0])])
            return
        ip = self._service_ip(key[0], labels)
        if ip is None:
            self._set_pod(key, init=inits, main=[_waiting(c["name"], image, "CrashLoopBackOff", "no Service selects the pod (fake kubelet)")])
            return
        env["FAKE_POD_IP"] = ip
        argv = [sys.executable, str(ENGINE), "--engine", c["name"], "--", *map(self._rewriter(c, pod_dir, ARGS_KEEP), c.get("args", []))]
        self._set_pod(key, phase="Running", init=inits)
        self._set_ready(deployment_key, key, image, c["name"], False)
        proc = self._run(key, argv, env, pod_dir, log)
        if proc is None:
            return
        probe = c["readinessProbe"]["httpGet"]
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == probe["port"]) if isinstance(probe["port"], str) else probe["port"]
        url = f"http://{ip}:{port}{probe['path']}"
        ready = False
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    now_ready = response.status == 200
            except (OSError, ValueError):
                now_ready = False
            if now_ready != ready:
                ready = now_ready
                self._set_ready(deployment_key, key, image, c["name"], ready)
            time.sleep(0.2)
        with self.lock:
            alive = key in self.pods
        if alive:  # it exited on its own: the kubelet restarts it with a back-off
            self._set_ready(deployment_key, key, image, c["name"], False)
            self._set_pod(
                key,
                main=[
                    _waiting(
                        c["name"],
                        image,
                        "CrashLoopBackOff",
                        f"back-off 10s restarting failed container={c['name']}",
                        restarts=1,
                        last=_terminated(proc.returncode, "Error"),
                    )
                ],
            )

    def server_gone(self, name: str, namespace: str = "sicog", timeout: float = 20) -> bool:
        """True once the Deployment, its Service and its pods are gone and every process of its pods has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                objects = (namespace, name) in self.deployments or (namespace, name) in self.services
                procs = [p for (ns, pod), ps in self.pod_procs.items() if ns == namespace and pod.startswith(f"{name}-") for p in ps]
                pods = [k for k, owner in self.pod_owner.items() if owner == (namespace, name) and k in self.pods]
            if not objects and not pods and all(p.poll() is not None for p in procs):
                return True
            time.sleep(0.1)
        return False

    def pod_log(self, deployment: str) -> str:
        """The log of the Deployment's pod(s) (init and engine output), for assertions."""
        return "".join(path.read_text(errors="replace") for pod, path in self.pod_logs.items() if pod.startswith(f"{deployment}-"))
