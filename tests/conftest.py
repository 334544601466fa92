"""Fixtures shared by the test modules that need a real S3 API server (moto on loopback), and the
suite's guards: a hung test ends with its processes, no test leaves a process or kfp.local's swaps behind."""

from __future__ import annotations

import builtins
import faulthandler
import logging
import sys
import threading
import time
import uuid
import warnings

import psutil
import pytest
from _pytest.faulthandler import fault_handler_stderr_fd_key

from s3server import S3Server


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server, monkeypatch):
    """A fresh bucket, with the environment a pod gets from its Secret (and a short retry budget); no
    other source of S3 settings or credentials from the machine's environment (sicog.store.CHAIN_ENV)."""
    from sicog.store import CHAIN_ENV

    for key in {*CHAIN_ENV, "AWS_ENDPOINT_URL_S3"} - {"HOME"}:
        monkeypatch.delenv(key, raising=False)
    for key, value in {
        "SICOG_S3_ENDPOINT": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": "sicog-test",
        "AWS_SECRET_ACCESS_KEY": "sicog-test-secret",
        "AWS_REGION": "us-east-1",
        "SICOG_S3_RETRY_SECONDS": "20",
    }.items():
        monkeypatch.setenv(key, value)
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().make_bucket(name)
    return name


# --- the suite's guards: no hang outlives its test, no test outlives its processes ----------------------
#
# Every test has a time limit (pyproject.toml: pytest-timeout's default; `@pytest.mark.timeout(N)` on the
# slow ones). On expiry pytest-timeout raises in the main thread (SIGALRM). That alone does not end a test
# whose main thread then waits on another thread in a `finally` (kfp.local's ParallelFor does:
# ParallelExecutor.execute_parallel_tasks shuts its thread pool down with wait=True) while that thread
# reads the pipe of a stuck child process. So a few seconds after the limit, the processes the test
# started are ended too, and whatever waited on them returns. Whatever a test leaves running when it
# ends, pass or fail, is ended in its teardown. If the test still has not ended BACKSTOP_S after that
# (its main thread waits on a thread that waits on a lock, not on a process), faulthandler prints every
# thread's stack and ends the run: a failed run with the stacks to mend it, never a hung one.

SLOW_TIMEOUT_S = 600  # the limit of a test marked slow that names none of its own
BACKSTOP_S = 120  # after the limit and the processes' end: the whole run ends, with every thread's stack
GRACE_S = 5  # how long a test's leftover processes may take to end by themselves (or after SIGTERM)
_BASELINE = pytest.StashKey[set]()  # the processes that already ran when the test's own fixtures started
_WATCHDOG = pytest.StashKey[threading.Timer]()


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _key(proc: psutil.Process):
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return proc.pid, None


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie is reaped by its owner, e.g. its subprocess.Popen: not here)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait(procs: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := [p for p in procs if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def end_processes(procs: list[psutil.Process], grace_s: float = GRACE_S) -> list[str]:
    """SIGTERM, then SIGKILL after `grace_s`; returns what was still running, as "pid command"."""
    procs = [p for p in procs if _alive(p)]
    named = []
    for proc in procs:
        try:
            named.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
            proc.terminate()
        except psutil.Error:
            pass
    for proc in _wait(procs, grace_s):
        try:
            proc.kill()
        except psutil.Error:
            pass
    _wait(procs, grace_s)
    return named


def _started_by(item) -> list[psutil.Process]:
    """The processes (and their children) that started during the test: none if it has no baseline yet."""
    baseline = item.stash.get(_BASELINE, None)
    return [] if baseline is None else [p for p in _descendants() if _key(p) not in baseline]


def pytest_collection_modifyitems(config, items):
    """A test marked slow without a `timeout` mark gets SLOW_TIMEOUT_S instead of the suite's default."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    """Beside pytest-timeout's own timer (this returns None, so it still sets it): GRACE_S after the
    limit, end the processes the test started, in case its main thread waits on them."""
    item.stash[_BASELINE] = {_key(p) for p in _descendants()}

    def expire():
        named = end_processes(_started_by(item))
        if named:
            sys.stderr.write(f"\n{item.nodeid}: past its {settings.timeout} s limit; ended the processes it started:\n  " + "\n  ".join(named) + "\n")

    timer = threading.Timer(settings.timeout + GRACE_S, expire)
    timer.daemon = True
    timer.name = f"conftest watchdog {item.nodeid}"
    timer.start()
    item.stash[_WATCHDOG] = timer
    # pytest's own duplicate of the terminal's stderr: the test's stderr is captured, and lost on exit.
    stderr = item.config.stash.get(fault_handler_stderr_fd_key, None) or sys.__stderr__.fileno()
    faulthandler.dump_traceback_later(settings.timeout + GRACE_S + BACKSTOP_S, file=stderr, exit=True)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item):
    timer = item.stash.get(_WATCHDOG, None)
    if timer is not None:
        timer.cancel()
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _ends_what_it_starts(request):
    """A test's processes end with it; the process-wide state kfp.local swaps is as the test found it."""
    item = request.node
    item.stash[_BASELINE] = {_key(p) for p in _descendants()}  # now: after the module's and the session's fixtures
    root = logging.getLogger()
    printer, handlers, level = builtins.print, root.handlers[:], root.level
    yield
    builtins.print = printer
    root.handlers[:] = handlers
    root.setLevel(level)
    left = _wait(_started_by(item), GRACE_S)  # e.g. an engine pod still shutting down after its Deployment went
    if named := end_processes(left):
        warnings.warn(f"{item.nodeid} left {len(named)} process(es) running; ended them: " + "; ".join(named), stacklevel=1)


# --- kfp.local's process-wide swaps, made safe for its ParallelFor threads (sicog.pipelines.local) ------


@pytest.fixture(scope="session", autouse=True)
def _kfp_local_thread_safe():
    from sicog.pipelines.local import thread_safe

    with thread_safe():
        yield
