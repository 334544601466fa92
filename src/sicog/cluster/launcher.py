"""Run a PyTorchJob to its end: create it, follow it, and never leave one behind by accident.

The cluster backend of a training stage (sicog.train.backends.pytorchjob: the pipeline's train task,
or `sicog job run` on a workstation) creates the job with the kubeflow-training SDK's TrainingClient
(credentials from sicog.cluster.kube: KUBECONFIG, else in-cluster ones in a pod), then polls it
(sicog.retry.poll) until Succeeded or Failed, printing each new condition and each change of the
Master replica ("pytorchjob NAME: Running (master active 1)"). The wait has a real overall deadline
(the SDK's wait_for_job_conditions counts polls, not time): past it the job is deleted and the task
fails. A Failed job fails the task with the job's reason and message, after the tail of the master's
log. A cancelled KFP run terminates its task's pod: SIGTERM (and SIGINT: Ctrl-C of `sicog job run`)
delete the job before the process exits non-zero. A job whose launcher was killed outright still
ends at its activeDeadlineSeconds (= cluster.job_timeout_s). A retried task finds the job its
earlier attempt created (the name is a function of the output URI) and follows it instead of
starting over; a Failed one is replaced.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from sicog import retry
from sicog.console import say

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LOG_TAIL_LINES = 100  # torchrun's own failure report takes ~10 lines per rank after the ranks' errors
REQUEST_TIMEOUT_S = 60  # one API call; the overall deadline still applies


class JobError(RuntimeError):
    """The job failed, timed out, vanished, or could not be created: one line, for the task's log."""


class _Cancelled(BaseException):
    """Raised by the signal handler; a BaseException so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def job_namespace(configured: str = "") -> str:
    """cluster.namespace, else the namespace of the pod this runs in, else "default"."""
    if configured:
        return configured
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    return "default"


def _say(name: str, text: str) -> None:
    say(f"pytorchjob {name}", text)


def api_status(exc: BaseException) -> int | None:
    """HTTP status of the API error behind an SDK error (the SDK wraps ApiException in RuntimeError)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return getattr(cause, "status", None)


def api_message(exc: BaseException) -> str:
    """One line for a Kubernetes API error (raised by the client, or wrapped by an SDK): the API's own message where there is one."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    body = getattr(cause, "body", None)
    if body:
        try:
            return f"{cause.status} {json.loads(body).get('message', '')}".strip()
        except (ValueError, AttributeError):
            pass
    if getattr(cause, "status", None):
        return f"{cause.status} {cause.reason}"
    return " ".join(str(exc).split())[:300]


def _true_conditions(job) -> list:
    conditions = (job.status.conditions or []) if job.status else []
    return [c for c in conditions if c.status == "True"]


def _master(job) -> str:
    """ "master active 1", "master succeeded 1", ... or "master pending" before the operator counts it."""
    statuses = (job.status.replica_statuses or {}) if job.status else {}
    master = statuses.get("Master")
    counts = [f"{key} {getattr(master, key)}" for key in ("active", "succeeded", "failed") if master is not None and getattr(master, key)]
    return "master " + (", ".join(counts) if counts else "pending")


def _delete(client, name: str, namespace: str) -> None:
    """Delete the job (its pods go with it); one already gone is fine."""
    try:
        client.delete_job(name, namespace)
    except RuntimeError as exc:
        if api_status(exc) != 404:
            say(f"pytorchjob {name}", f"could not delete it ({api_message(exc)}); delete it by hand", stderr=True)


def _log_tail(client, name: str, namespace: str) -> None:
    """Print the last lines of the master pod's log (best effort: the pod may be gone, or not readable)."""
    try:
        for pod in client.get_job_pods(name, namespace, is_master=True, timeout=REQUEST_TIMEOUT_S):
            text = client.core_api.read_namespaced_pod_log(
                pod.metadata.name, namespace, container="pytorch", tail_lines=LOG_TAIL_LINES, _request_timeout=REQUEST_TIMEOUT_S
            )
            say(f"pytorchjob {name}", f"last lines of {pod.metadata.name}'s log:\n{text.rstrip()}", stderr=True)
    except Exception as exc:  # noqa: BLE001 - the job's own error follows; a missing log must not hide it
        say(f"pytorchjob {name}", f"could not read the master's log ({api_message(exc)})", stderr=True)


@contextmanager
def cleanup_on_signal(announce: Callable[[str], None], cleanup: Callable[[], None]):
    """While inside: SIGTERM / SIGINT (a cancelled KFP run terminates the task's pod; Ctrl-C) announce
    the signal's name, run `cleanup` (a second signal cannot interrupt it), then exit with 128 + the
    signal's number. Outside the main thread, where no handler can be set, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum, frame):
        raise _Cancelled(signum)

    previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _Cancelled as exc:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        announce(signal.Signals(exc.signum).name)
        cleanup()
        raise SystemExit(128 + exc.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _create(client, job, name: str, namespace: str) -> None:
    """Create the job; if a job of this name exists (an earlier attempt of the same task), follow it,
    unless it has Failed: then it is deleted and created again."""
    from kubeflow.training.constants import constants

    for attempt in range(2):
        try:
            client.create_job(job, namespace=namespace)
            _say(name, f"created in namespace {namespace}")
            return
        except RuntimeError as exc:
            if api_status(exc) != 409 or attempt:
                raise JobError(f"pytorchjob {name}: could not create it in namespace {namespace}: {api_message(exc)}") from None
        existing = client.get_job(name, namespace, timeout=REQUEST_TIMEOUT_S)
        if not any(c.type == constants.JOB_CONDITION_FAILED for c in _true_conditions(existing)):
            _say(name, "exists already (an earlier attempt of this task): following it")
            return
        _say(name, "an earlier attempt's job has failed: deleting it and starting again")
        _delete(client, name, namespace)
        retry.poll(lambda: _gone(client, name, namespace), every_s=1, budget_s=60)  # the operator's finalizers (if any) run first


def _gone(client, name: str, namespace: str) -> bool | None:
    """True once the API answers 404 for the job; None while it (or an unreadable status) is still there."""
    try:
        client.get_job(name, namespace, timeout=REQUEST_TIMEOUT_S)
    except RuntimeError as exc:
        if api_status(exc) == 404:
            return True
    return None


class JobFollower:
    """One poll of a training job, for retry.poll: says each new condition and each change of its pods'
    counts; returns the finished job once it succeeded, raises JobError once it failed (after a pod's
    log) or vanished. An API error is said once and polled again: a blip of the API server must not
    fail a week of training. A kind of job says how it is read (PyTorchFollower, TrainJobFollower)."""

    kind, succeeded, failed = "job", "Succeeded", "Failed"
    api_errors: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, name: str, namespace: str, deadline: float, state: str):
        self.name, self.namespace, self.deadline = name, namespace, deadline
        self.seen: set[tuple] = set()
        self.state, self.pods_said, self.last_error = state, "", None

    def read(self, timeout: float):
        """The job, as the API has it now."""
        raise NotImplementedError

    def conditions(self, job) -> list[dict]:
        """Its true conditions: [{"type", "time", "reason", "message"}]."""
        raise NotImplementedError

    def pods(self, job) -> str:
        """Its pods' counts in words, e.g. "master active 1"."""
        raise NotImplementedError

    def log_tail(self) -> None:
        """Say the last lines of the failed pod's log (best effort)."""

    def detail(self, condition: dict) -> str:
        """Words to add to a condition's line."""
        return ""

    def state_after(self, pods: str) -> str:
        """The state when only the pods' counts changed."""
        return self.state

    def __call__(self):
        remaining = max(1, math.ceil(min(REQUEST_TIMEOUT_S, self.deadline - time.monotonic())))
        try:
            job = self.read(remaining)
        except self.api_errors as exc:
            if api_status(exc) == 404:
                raise JobError(f"{self.kind} {self.name} was deleted before it finished (last state: {self.state})") from None
            if api_message(exc) != self.last_error:
                self.last_error = api_message(exc)
                say(f"{self.kind} {self.name}", f"cannot read its status ({self.last_error}); retrying")
            return None
        self.last_error = None
        pods, conditions = self.pods(job), self.conditions(job)
        fresh = [c for c in conditions if (c["type"], c["time"]) not in self.seen]
        for c in fresh:
            self.seen.add((c["type"], c["time"]))
            self.state = c["type"]
            say(f"{self.kind} {self.name}", f"{c['type']} ({pods})" + self.detail(c))
        if not fresh and pods != self.pods_said:
            self.state = self.state_after(pods)
            say(f"{self.kind} {self.name}", f"{self.state} ({pods})")
        self.pods_said = pods
        failed = [c for c in conditions if c["type"] == self.failed]
        if failed:
            self.log_tail()
            message = " ".join((failed[-1]["message"] or "").split())
            raise JobError(f"{self.kind} {self.name} failed: {failed[-1]['reason'] or self.failed}: {message}")
        return job if any(c["type"] == self.succeeded for c in conditions) else None


class PyTorchFollower(JobFollower):
    """A PyTorchJob (Training Operator v1), read through the kubeflow-training SDK."""

    kind = "pytorchjob"
    api_errors = (RuntimeError, TimeoutError)

    def __init__(self, client, name: str, namespace: str, deadline: float):
        super().__init__(name, namespace, deadline, state="none")
        self.client = client

    def read(self, timeout: float):
        return self.client.get_job(self.name, self.namespace, timeout=timeout)

    def conditions(self, job) -> list[dict]:
        return [{"type": c.type, "time": str(c.last_transition_time), "reason": c.reason, "message": c.message} for c in _true_conditions(job)]

    def pods(self, job) -> str:
        return _master(job)

    def log_tail(self) -> None:
        _log_tail(self.client, self.name, self.namespace)


def _wait(client, name: str, namespace: str, timeout_s: float, poll_s: float):
    """Poll every poll_s until the job Succeeded (returned) or Failed (JobError); past timeout_s it is deleted (JobError)."""
    follow = PyTorchFollower(client, name, namespace, time.monotonic() + timeout_s)
    job = retry.poll(follow, every_s=poll_s, budget_s=timeout_s)
    if job is None:
        _delete(client, name, namespace)
        raise JobError(f"pytorchjob {name}: not finished within the {timeout_s:g} s timeout (last state: {follow.state}); deleted it")
    return job


def training_client(namespace: str):
    """The SDK's client on sicog.cluster.kube's credentials ($KUBECONFIG's context when set, else in-cluster
    credentials inside a pod, else ~/.kube/config); UserError when there are none."""
    from kubeflow.training import TrainingClient

    from sicog.cluster import kube

    return TrainingClient(client_configuration=kube.configuration(), namespace=namespace)


def run_pytorchjob(job, namespace: str, timeout_s: float, poll_s: float, client=None):
    """Create `job` in `namespace` and wait (at most timeout_s, polling every poll_s) until it Succeeded;
    returns the finished job. Raises JobError when it fails, times out (deleted) or disappears;
    SIGTERM / SIGINT while waiting delete it and exit with 128 + the signal number."""
    name = job.metadata.name
    client = client or training_client(namespace)
    with cleanup_on_signal(lambda sig: _say(name, f"{sig}: deleting the job"), lambda: _delete(client, name, namespace)):
        _create(client, job, name, namespace)
        return _wait(client, name, namespace, timeout_s, poll_s)
