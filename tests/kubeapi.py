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
"""

from __future__ import annotations

import functools
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
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import yaml

CRD = Path(__file__).parent / "schemas" / "kubeflow.org_pytorchjobs.yaml"
JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
HOLD = [sys.executable, "-c", "import time; time.sleep(3600)"]


@functools.lru_cache(maxsize=1)
def crd_schema() -> dict:
    """The CRD's openAPIV3Schema of kubeflow.org/v1 PyTorchJob (read once: 220 KB of YAML)."""
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


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
        self.workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fake-kube-{uuid.uuid4().hex[:8]}"
        self._server: ThreadingHTTPServer | None = None

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

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        with self.lock:
            procs = list(self.procs.values())
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
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }))
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
        if method == "POST":
            body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))) or b"{}")
        if m := JOBS.match(url.path):
            code, reply = self._jobs(method, m.group(1), m.group(2), body)
        elif (m := PODS.match(url.path)) and method == "GET":
            code, reply = 200, self._pods(m.group(1), query.get("labelSelector", ""))
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
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": name, "group": "kubeflow.org", "kind": "pytorchjobs", "uid": job["metadata"]["uid"]}}
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
            for (ns, name), job in self.jobs.items():
                labels = {"training.kubeflow.org/job-name": name, "training.kubeflow.org/job-role": "master",
                          "training.kubeflow.org/replica-type": "master", "training.kubeflow.org/replica-index": "0"}
                if ns == namespace and name in self.procs and all(labels.get(k) == v for k, v in wanted.items()):
                    proc = self.procs[name]
                    phase = "Running" if proc.poll() is None else ("Succeeded" if proc.returncode == 0 else "Failed")
                    items.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-master-0", "namespace": ns, "labels": labels},
                                  "status": {"phase": phase}})
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}

    def _log(self, pod: str, tail: int | None):
        path = self.logs.get(pod.removesuffix("-master-0"))
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
        conditions.append({"type": ctype, "status": "True", "reason": reason, "message": message,
                           "lastUpdateTime": _now(), "lastTransitionTime": _now()})

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
        env.update(PYTHONUNBUFFERED="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(total * int(nproc)), RANK="0",
                   PET_NNODES=str(total), PET_NPROC_PER_NODE=nproc, PET_NODE_RANK="0", PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port)
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
                self._condition(key, "Failed", "PyTorchJobFailed",
                                f"PyTorchJob {namespace}/{name} is failed because 1 Master replica(s) failed (exit code {code}).")

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
        """True once the job is deleted and its process has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                proc = self.procs.get(name)
                gone = all(n != name for _, n in self.jobs)
            if gone and (proc is None or proc.poll() is not None):
                return True
            time.sleep(0.1)
        return False
