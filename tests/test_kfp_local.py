"""sicog.pipelines.local: kfp.local's per-task swaps under overlapping ParallelFor threads, and logging's
module lock when setting a level fails midway."""

from __future__ import annotations

import builtins
import logging
import threading

import pytest


def _overlap(first_out: str) -> None:
    """Two tasks enter kfp.local's swaps one after the other; `first_out` leaves first."""
    from kfp.local import logging_utils

    entered, leave = {n: threading.Event() for n in "ab"}, {n: threading.Event() for n in "ab"}

    def task(name):
        with logging_utils.local_logger_context(), logging_utils.indented_print(4):
            entered[name].set()
            leave[name].wait(10)

    threads = {n: threading.Thread(target=task, args=(n,)) for n in "ab"}
    threads["a"].start()
    entered["a"].wait(10)
    threads["b"].start()
    entered["b"].wait(10)
    for name in (first_out, "b" if first_out == "a" else "a"):
        leave[name].set()
        threads[name].join(10)


@pytest.mark.parametrize("first_out", ["a", "b"])
def test_overlapping_tasks_leave_print_and_the_root_logger_as_they_were(first_out):
    """Unshared, when the first task in is the first out, builtins.print stays the second one's wrapper
    (and the root logger keeps kfp's handler at INFO): every later print then costs one more level."""
    root = logging.getLogger()
    printer, handlers, level = builtins.print, root.handlers[:], root.level
    _overlap(first_out)
    assert builtins.print is printer
    assert root.handlers == handlers and root.level == level


class _Broken(logging.Logger):
    """A logger whose level cache cannot be cleared: an exception inside Manager._clear_cache's loop."""

    class _Cache(dict):
        def clear(self):
            raise RuntimeError("dictionary changed size during iteration")

    def __init__(self, name):
        super().__init__(name)
        self._cache = self._Cache()


def test_a_failed_level_change_does_not_keep_loggings_lock():
    """Python 3.11's Manager._clear_cache (every setLevel) holds the lock without try/finally; a leak
    here stalled the suite: a ParallelFor thread waited for the lock, the main thread for that thread."""
    manager = logging.getLogger().manager
    manager.loggerDict["sicog-test-broken"] = _Broken("sicog-test-broken")
    try:
        with pytest.raises(RuntimeError):
            logging.getLogger("sicog-test").setLevel(logging.INFO)
    finally:
        del manager.loggerDict["sicog-test-broken"]
    got = []
    other = threading.Thread(target=lambda: got.append(logging._lock.acquire(timeout=5)) or (got[0] and logging._lock.release()))
    other.start()
    other.join(10)
    assert got == [True], "logging's module lock was left held by the failed setLevel"
