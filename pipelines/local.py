"""kfp.local, made safe to run a pipeline's ParallelFor iterations on threads of this process.

kfp.local (kfp 2.17.0) runs a dsl.ParallelFor's iterations on a thread pool
(kfp/local/orchestrator/enhanced_dag_orchestrator.py, ParallelExecutor.execute_parallel_tasks), and each
task swaps two process-wide globals for its duration (kfp/local/task_dispatcher.py): the root logger's
handlers and level (logging_utils.local_logger_context) and builtins.print (logging_utils.indented_print).
Neither swap is thread-safe. Two iterations that overlap restore them out of order: builtins.print stays
one iteration's indenting wrapper around the other's, and every later print costs 2**levels calls. Run
repeatedly in one process (the served sampling group, 14 runs under load), a run took 38 s, then 136 s,
282 s, and the 15th hung. Under `thread_safe()` overlapping tasks share one swap: the first task in
makes it, the last one out undoes it.

The same swap calls `Logger.setLevel` twice per task, and on Python < 3.13 that takes logging's module
lock without a try/finally (logging.Manager._clear_cache; CPython gh-109461 moved it into a `with` in
3.13). An exception raised while it holds the lock (e.g. pytest-timeout's alarm) leaks the lock, and the next task
thread that makes a handler waits for it forever while the main thread waits for that thread
(ParallelExecutor shuts its pool down with wait=True). Under `thread_safe()` it is 3.13's version.
Both stay until a kfp release makes its swaps thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator


def _shared(swap: Callable) -> Callable:
    """`swap` (a context manager factory) entered once for all overlapping users, from any thread."""
    lock, state = threading.Lock(), {"users": 0, "cm": None}

    @contextlib.contextmanager
    def shared(*args, **kwargs):
        with lock:
            if state["users"] == 0:
                state["cm"] = swap(*args, **kwargs)
                state["cm"].__enter__()
            state["users"] += 1
        try:
            yield
        finally:
            with lock:
                state["users"] -= 1
                if state["users"] == 0:
                    cm, state["cm"] = state["cm"], None
                    cm.__exit__(None, None, None)

    shared.__wrapped__ = swap
    return shared


def _clear_cache(self: logging.Manager) -> None:
    """Python 3.13's logging.Manager._clear_cache: the module lock is released whatever happens."""
    with logging._lock:
        for logger in self.loggerDict.values():
            if isinstance(logger, logging.Logger):
                logger._cache.clear()
        self.root._cache.clear()


@contextlib.contextmanager
def thread_safe() -> Iterator[None]:
    """While inside, kfp.local's per-task swaps are shared by overlapping tasks, and setting a logger's
    level cannot leak logging's lock. Re-entrant: an inner use wraps the outer one's (harmless)."""
    from kfp.local import logging_utils

    swaps = {name: getattr(logging_utils, name) for name in ("indented_print", "local_logger_context")}
    clear_cache = logging.Manager._clear_cache
    try:
        for name, swap in swaps.items():
            setattr(logging_utils, name, _shared(swap))
        if sys.version_info < (3, 13):
            logging.Manager._clear_cache = _clear_cache
        yield
    finally:
        for name, swap in swaps.items():
            setattr(logging_utils, name, swap)
        logging.Manager._clear_cache = clear_cache
