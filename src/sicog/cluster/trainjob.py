"""One SICOG training stage as a Kubeflow Trainer v2 TrainJob (`trainer.kubeflow.org/v1alpha1`), run to its end.

The default cluster backend of training (sicog.train.backends.trainjob; cluster.trainer trainjob, or
auto in a pipeline compiled for a cluster). Checked against Trainer v2.2 (the vendored CRD in
tests/schemas/, and kubeflow/trainer's torch plugin):

- `spec.runtimeRef` names a ClusterTrainingRuntime (cluster.training_runtime; Kubeflow's manifests
  install `torch-distributed`: one replicated job `node`, its container `node`, `mlPolicy.torch`).
- `spec.trainer`: the image, `numNodes` = cluster.nodes, `numProcPerNode` = train.nproc, the GPUs per
  node (`resourcesPerNode`), the env (S3 wiring, as the PyTorchJob has) and the command. The torch
  plugin does not wrap the command: it sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job's
  completion index), PET_MASTER_ADDR (`<job>-node-0-0.<job>`) and PET_MASTER_PORT (29500) in the
  `node` container, so the command is the same `torchrun -m sicog.train REQUEST_URI` the PyTorchJob
  pods run, taking the whole topology from those variables.
- Placement goes through `spec.runtimePatches` (v2.2; v2.0's `podSpecOverrides` and v2.1's
  `podTemplateOverrides` are gone): one patch, manager `sicog.io/trainer`, on the runtime's `node`
  job: node selector, tolerations, the in-memory /dev/shm and a /tmp emptyDir (mounted into the
  `node` container), the pod and container security context (uid 10001, no privilege escalation),
  the service account when there is no S3 Secret (as for the PyTorchJob's pods), the pods' labels
  and no Istio sidecar (it would keep a finished pod running). A patch cannot carry
  env for the `node` container (the webhook refuses it): env goes in `spec.trainer.env`.
- `spec.activeDeadlineSeconds` = cluster.job_timeout_s: the controller fails the job
  (DeadlineExceeded) even if its launcher was killed outright.
- Labels: sicog's, and `kueue.x-k8s.io/queue-name` = cluster.queue when set (Kueue then admits the
  job: it is created suspended and reported as such until then).
- An ownerReference to the run's Argo Workflow (sicog.cluster.serving.find_owner) when the launcher
  runs in a pipeline pod: deleting the run deletes its TrainJobs (and their JobSets and pods).

Restarts of a failed node follow the ClusterTrainingRuntime (its Job's backoffLimit, its JobSet's
failurePolicy): a TrainJob cannot set them. Every restarted rank resumes from its checkpoint.

The launcher mirrors sicog.cluster.launcher's for PyTorchJobs, on the Kubernetes CustomObjectsApi
(sicog.cluster.kube; the kubeflow-training 1.9 SDK knows no TrainJob): create the job, poll it
(sicog.retry.poll) until its `Complete` or `Failed` condition (both copied by the controller from
the JobSet's: reasons AllJobsCompleted, FailedJobs, ReachedMaxRestarts, DeadlineExceeded), print
each new condition and each change of the `node` job's counts ("trainjob NAME: Running (node active 1)";
a TrainJob has no Running condition, so Running means its node job is active), delete it on the
overall timeout and on SIGTERM / SIGINT, fail with the job's reason after the tail of a failed pod's
log, and follow the job an earlier attempt of the same task created (replacing a Failed one).
"""

from __future__ import annotations

import math
import time

from sicog import retry
from sicog.cluster.launcher import REQUEST_TIMEOUT_S, JobError, JobFollower, api_message, api_status, cleanup_on_signal, job_namespace
from sicog.cluster.pytorchjob import USER, _env, _labels, _resources, _service_account, _tolerations, _volumes, job_name, manifest, train_command
from sicog.config import SicogConfig
from sicog.console import say

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE = "node"  # the torch runtime's replicated job and its trainer container (Trainer's constants.Node)
PATCH_MANAGER = "sicog.io/trainer"  # a runtimePatches entry is keyed by its manager (a domain-prefixed path)
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod of the TrainJob's JobSet (named as the TrainJob)
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"  # the node's index: PET_NODE_RANK
LOG_TAIL_LINES = 100
COMPLETE, FAILED = "Complete", "Failed"


def build_trainjob(cfg: SicogConfig, *, stage: str, name: str, out: str, request_uri: str, owner: dict | None = None) -> dict:
    """The TrainJob (a plain manifest) whose `node` pods run the training request at `request_uri`
    (stage `stage`, run name `name`, output `out`: its labels and name); `owner`: the run's Workflow
    ({apiVersion, kind, name, uid}) as its owner."""
    volumes, mounts = _volumes(cfg)
    labels = _labels(stage, name)
    pod = {
        "volumes": volumes,
        "containers": [{"name": NODE, "volumeMounts": mounts, "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER, "runAsGroup": USER, "fsGroup": USER, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if cfg.cluster.node_selector:
        pod["nodeSelector"] = dict(cfg.cluster.node_selector)
    if cfg.cluster.tolerations:
        pod["tolerations"] = _tolerations(cfg)
    if _service_account(cfg):  # no S3 Secret: the store's credentials come from this account's role
        pod["serviceAccountName"] = _service_account(cfg)
    # No Istio sidecar: it would hold the pod Running after training exits, so the job never completes.
    template = {"metadata": {"labels": labels, "annotations": {"sidecar.istio.io/inject": "false"}}, "spec": pod}
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{"name": NODE, "template": {"spec": {"template": template}}}]}}},
    }
    metadata = {"name": job_name(name, out), "labels": {**labels, **({QUEUE_LABEL: cfg.cluster.queue} if cfg.cluster.queue else {})}}
    if cfg.cluster.namespace:
        metadata["namespace"] = cfg.cluster.namespace
    if owner:
        # blockOwnerDeletion false: deleting the Workflow must never wait on (or be refused for) the job.
        metadata["ownerReferences"] = [{**{k: owner[k] for k in ("apiVersion", "kind", "name", "uid")}, "blockOwnerDeletion": False}]
    return manifest(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": metadata,
            "spec": {
                "runtimeRef": {"name": cfg.cluster.training_runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
                "trainer": {
                    "image": cfg.cluster.trainer_image,
                    "command": train_command(request_uri),
                    "env": _env(cfg),
                    "numNodes": cfg.cluster.nodes,
                    "numProcPerNode": cfg.train.nproc,
                    "resourcesPerNode": _resources(cfg),
                },
                "runtimePatches": [patch],
                "activeDeadlineSeconds": math.ceil(cfg.cluster.job_timeout_s),
            },
        }
    )


def world_size(job: dict) -> int:
    """Ranks of the TrainJob: numNodes x numProcPerNode."""
    return job["spec"]["trainer"]["numNodes"] * job["spec"]["trainer"]["numProcPerNode"]


# --- the launcher ------------------------------------------------------------------------------------


def _say(name: str, text: str) -> None:
    say(f"trainjob {name}", text)


def _api_errors():
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError)


def _get(api, name: str, namespace: str, timeout: float = REQUEST_TIMEOUT_S) -> dict:
    return api.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, _request_timeout=timeout)


def _delete(api, name: str, namespace: str) -> None:
    """Delete the job, its JobSet and pods first (foreground: a job of the same name can follow at once); one already gone is fine."""
    try:
        api.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground", _request_timeout=REQUEST_TIMEOUT_S)
    except _api_errors() as exc:
        if api_status(exc) != 404:
            say(f"trainjob {name}", f"could not delete it ({api_message(exc)}); delete it by hand", stderr=True)


def _gone(api, name: str, namespace: str) -> bool | None:
    try:
        _get(api, name, namespace)
    except _api_errors() as exc:
        if api_status(exc) == 404:
            return True
    return None


def _conditions(job: dict) -> list[dict]:
    return [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]


def _node(job: dict) -> str:
    """ "node active 1", "node succeeded 1", ... from the `node` job's counts, or "node pending" before there are any."""
    status = next((s for s in (job.get("status") or {}).get("jobsStatus") or [] if s.get("name") == NODE), {})
    counts = [f"{key} {status[key]}" for key in ("active", "ready", "succeeded", "failed", "suspended") if status.get(key)]
    return "node " + (", ".join(counts) if counts else "pending")


def _log_tail(api, name: str, namespace: str) -> None:
    """Print the last lines of a failed node pod's log (else node 0's); best effort."""
    try:
        pods = api.core.list_namespaced_pod(namespace, label_selector=f"{JOBSET_LABEL}={name}", _request_timeout=REQUEST_TIMEOUT_S).items
        if not pods:
            raise LookupError("no pods left")
        pod = min(pods, key=lambda p: (p.status is None or p.status.phase != "Failed", int((p.metadata.labels or {}).get(INDEX_LABEL) or 0)))
        text = api.core.read_namespaced_pod_log(pod.metadata.name, namespace, container=NODE, tail_lines=LOG_TAIL_LINES, _request_timeout=REQUEST_TIMEOUT_S)
        say(f"trainjob {name}", f"last lines of {pod.metadata.name}'s log:\n{text.rstrip()}", stderr=True)
    except (LookupError, *_api_errors()) as exc:  # the job's own error follows; a missing log must not hide it
        say(f"trainjob {name}", f"could not read a node's log ({api_message(exc)})", stderr=True)


def _create(api, job: dict, name: str, namespace: str) -> None:
    """Create the job; if one of this name exists (an earlier attempt of the same task), follow it,
    unless it has Failed: then it is deleted and created again."""
    for attempt in range(2):
        try:
            api.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job, _request_timeout=REQUEST_TIMEOUT_S)
            trainer = job["spec"]["trainer"]
            _say(
                name,
                f"created in namespace {namespace} (runtime {job['spec']['runtimeRef']['name']}, "
                f"{trainer['numNodes']} nodes x {trainer['numProcPerNode']} processes)",
            )
            return
        except _api_errors() as exc:
            if api_status(exc) != 409 or attempt:
                raise JobError(f"trainjob {name}: could not create it in namespace {namespace}: {api_message(exc)}") from None
        if not any(c["type"] == FAILED for c in _conditions(_get(api, name, namespace))):
            _say(name, "exists already (an earlier attempt of this task): following it")
            return
        _say(name, "an earlier attempt's job has failed: deleting it and starting again")
        _delete(api, name, namespace)
        retry.poll(lambda: _gone(api, name, namespace), every_s=1, budget_s=120)


class TrainJobFollower(JobFollower):
    """A TrainJob (Kubeflow Trainer v2), read as a custom object; its pods are counted by its `node` job."""

    kind, succeeded, failed = "trainjob", COMPLETE, FAILED

    def __init__(self, api, name: str, namespace: str, deadline: float):
        super().__init__(name, namespace, deadline, state="Created")
        self.api, self.api_errors = api, _api_errors()

    def read(self, timeout: float) -> dict:
        return _get(self.api, self.name, self.namespace, timeout)

    def conditions(self, job: dict) -> list[dict]:
        return [{"type": c["type"], "time": c.get("lastTransitionTime"), "reason": c.get("reason"), "message": c.get("message")} for c in _conditions(job)]

    def pods(self, job: dict) -> str:
        return _node(job)

    def log_tail(self) -> None:
        _log_tail(self.api, self.name, self.namespace)

    def detail(self, condition: dict) -> str:
        return f": {condition['message']}" if condition["type"] == "Suspended" and condition["message"] else ""  # e.g. Kueue's admission

    def state_after(self, pods: str) -> str:
        return "Running" if self.state in ("Created", "Suspended") and "active" in pods else self.state  # no Running condition: its node job is active


def run_trainjob(job: dict, namespace: str, timeout_s: float, poll_s: float, api=None) -> dict:
    """Create `job` in `namespace` and wait (at most timeout_s, polling every poll_s) until it is
    Complete; returns the finished job. Raises JobError when it fails, times out (deleted) or
    disappears; SIGTERM / SIGINT while waiting delete it and exit with 128 + the signal number."""
    from sicog.cluster import kube

    name = job["metadata"]["name"]
    api = api or kube.connect()
    with cleanup_on_signal(lambda sig: _say(name, f"{sig}: deleting the job"), lambda: _delete(api, name, namespace)):
        _create(api, job, name, namespace)
        follow = TrainJobFollower(api, name, namespace, time.monotonic() + timeout_s)
        finished = retry.poll(follow, every_s=poll_s, budget_s=timeout_s)
        if finished is None:
            _delete(api, name, namespace)
            raise JobError(f"trainjob {name}: not finished within the {timeout_s:g} s timeout (last state: {follow.state}); deleted it")
    return finished


def train(cfg: SicogConfig, *, stage: str, name: str, out: str, request_uri: str) -> dict:
    """Build the stage's TrainJob (owned by the run's Workflow when this runs in one of its pods), run
    it to its end in cluster.namespace (else this pod's namespace) and return the finished job."""
    from sicog.cluster import kube
    from sicog.cluster.serving import find_owner

    api = kube.connect()
    namespace = job_namespace(cfg.cluster.namespace)
    owner = find_owner(api, namespace, who=f"trainjob {job_name(name, out)}", backstop="it ends at its activeDeadlineSeconds if the run goes first")
    job = build_trainjob(cfg, stage=stage, name=name, out=out, request_uri=request_uri, owner=owner)
    return run_trainjob(job, namespace, cfg.cluster.job_timeout_s, cfg.cluster.poll_s, api)
