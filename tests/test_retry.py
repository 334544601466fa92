"""The one retry policy (sicog.retry), the Kubernetes client factory (sicog.cluster.kube) and the
console helpers (sicog.console): small, fast checks of their contracts."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from sicog import console, retry
from sicog.errors import UserError


class Flaky:
    """Fails with `exc` the first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, exc: Exception | None = None):
        self.failures, self.calls, self.exc = failures, 0, exc or ConnectionError("refused")

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def connection(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


def test_retries_what_the_predicate_accepts_until_it_succeeds():
    fn = Flaky(2)
    assert retry.call(fn, connection, attempts=5, first_s=0.001) == "ok" and fn.calls == 3


def test_gives_up_after_the_attempts_with_the_last_error_itself():
    fn = Flaky(10, ConnectionError("still down"))
    with pytest.raises(ConnectionError, match="still down"):
        retry.call(fn, connection, attempts=3, first_s=0.001)
    assert fn.calls == 3


def test_an_error_the_predicate_refuses_is_not_retried():
    fn = Flaky(1, KeyError("bug"))
    with pytest.raises(KeyError):
        retry.call(fn, connection, attempts=5, first_s=0.001)
    assert fn.calls == 1


def test_a_time_budget_bounds_the_retries():
    fn = Flaky(10**9)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        retry.call(fn, connection, budget_s=0.3, first_s=0.02, max_s=0.05)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.0 and fn.calls > 3  # the last wait is cut to end at the budget
    zero = Flaky(10)
    with pytest.raises(ConnectionError):
        retry.call(zero, connection, budget_s=0, first_s=0.001)
    assert zero.calls == 1  # no budget: no retry


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap():
    for attempt, high in ((1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (10_000, 30.0)):
        waits = [retry.backoff_s(attempt, 0.5, 30.0) for _ in range(200)]
        assert all(high / 2 <= w <= high for w in waits) and len(set(waits)) > 1
        assert retry.backoff_s(attempt, 0.5, 30.0, jitter=False) == high


def test_a_server_named_delay_replaces_the_backoff(monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    retry.call(Flaky(2), connection, attempts=3, first_s=100.0, retry_after=lambda exc: 0.25)
    assert slept == [0.25, 0.25]


def test_each_retry_logs_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="sicog.retry"):
        retry.call(Flaky(2), connection, attempts=3, first_s=0.001, what="store: s3://b/k", describe=lambda exc: "described")
    lines = [r.getMessage() for r in caplog.records if r.name == "sicog.retry"]
    assert len(lines) == 2 and lines[0].startswith("store: s3://b/k: attempt 1 failed (described); retrying in ")


def test_async_retries_too():
    calls = 0

    async def once():
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TimeoutError("slow")
        return calls

    assert asyncio.run(retry.acall(once, lambda exc: isinstance(exc, TimeoutError), attempts=3, first_s=0.001)) == 3


def test_poll_returns_the_first_answer_or_none_at_the_budget():
    answers = iter([None, None, "ready"])
    assert retry.poll(lambda: next(answers), every_s=0.01, budget_s=5) == "ready"
    calls = []
    started = time.monotonic()
    assert retry.poll(lambda: calls.append(1), every_s=0.05, budget_s=0.2) is None
    assert 0.2 <= time.monotonic() - started < 0.6 and 4 <= len(calls) <= 6  # every 0.05 s, and once at the budget
    with pytest.raises(KeyError):
        retry.poll(lambda: {}["missing"], every_s=0.01, budget_s=5)  # an error ends the poll


def test_user_errors_are_no_value_errors():
    from sicog.config import ConfigError
    from sicog.scorer.client import ScorerError
    from sicog.store import StoreError

    assert not issubclass(UserError, ValueError)
    assert all(issubclass(e, UserError) for e in (ConfigError, StoreError, ScorerError))


# --- the Kubernetes client factory -----------------------------------------------------------------

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://kube.example:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: sicog}}]
current-context: x
"""


def test_kube_clients_come_from_kubeconfig_read_at_call_time(tmp_path, monkeypatch):
    from kubernetes.client import AppsV1Api, CoreV1Api, CustomObjectsApi

    from sicog.cluster import kube

    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # KUBECONFIG wins over in-cluster credentials
    assert kube.configuration().host == "https://kube.example:6443"
    api = kube.connect()
    assert isinstance(api.apps, AppsV1Api) and isinstance(api.core, CoreV1Api) and isinstance(api.custom, CustomObjectsApi)
    assert api.apps.api_client is api.core.api_client is api.custom.api_client  # one connection pool
    assert kube.KubeClients.connect().core.api_client.configuration.host == "https://kube.example:6443"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="^no access to a Kubernetes cluster: ") as err:
        kube.connect()
    assert "\n" not in str(err.value)


# --- console ---------------------------------------------------------------------------------------


def test_say_prints_one_flushed_line(capsys):
    console.say("server sicog-perception-1", "ready")
    console.say("pytorchjob j", "could not delete it", stderr=True)
    out, err = capsys.readouterr()
    assert out == "server sicog-perception-1: ready\n" and err == "pytorchjob j: could not delete it\n"


def test_progress_has_the_project_columns():
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = console.progress().columns
    assert [type(c) for c in columns] == [TextColumn, BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn]
