"""The one retry policy of sicog, on tenacity: what the store, the served-engine client, the scorer
client and the Kubernetes status polls all do when something may succeed if tried again.

The policy:
- which failures are retried is the caller's predicate (`retry_on`: an exception -> bool); any other
  exception propagates at once, unchanged;
- waits grow exponentially, with jitter: before retry n, a uniform draw in [d/2, d] seconds with
  d = min(max_s, first_s * 2**(n-1)) (clients that failed together do not retry together, and none
  retries at once), unless the failure itself names a delay (`retry_after`, e.g. an HTTP
  Retry-After header);
- it stops after `attempts` attempts and/or once `budget_s` seconds have passed since the first
  attempt (the last wait is shortened so that the last attempt starts at the budget, not after it);
  then the last exception propagates, unchanged (the caller words its own "gave up" error);
- every retry logs one line on the `sicog.retry` logger: what, which attempt failed and why, and the
  wait before the next one.

Use:
    retry.call(fn, retry_on, attempts=4)                      # fn() with retries; its result
    await retry.acall(coro_fn, retry_on, budget_s=300)        # the same for an async fn
    retry.poll(check, every_s=5, budget_s=1800)               # check() until it returns non-None; None when out of time
    for attempt in retry.retrying(retry_on, attempts=3):      # tenacity's own loop form
        with attempt: ...

The module imports nothing from sicog (a foundation module: any room may use it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity

T = TypeVar("T")
log = logging.getLogger("sicog.retry")

_MAX_DOUBLINGS = 62  # 2**62 already dwarfs any cap; keeps the exponent's float finite for long polls


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def backoff_s(attempt: int, first_s: float, max_s: float, jitter: bool = True) -> float:
    """The wait after failed attempt number `attempt` (1-based): d = min(max_s, first_s * 2**(attempt-1)),
    drawn uniformly from [d/2, d] (jitter=False: d itself)."""
    high = min(max_s, first_s * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    return random.uniform(high / 2, high) if jitter else high


def _wait(
    first_s: float, max_s: float, jitter: bool, budget_s: float | None, retry_after: Callable[[BaseException], float | None] | None
) -> Callable[[tenacity.RetryCallState], float]:
    def wait(state: tenacity.RetryCallState) -> float:
        delay = None
        if retry_after is not None and state.outcome is not None and state.outcome.failed:
            delay = retry_after(state.outcome.exception())
        if delay is None:
            delay = backoff_s(state.attempt_number, first_s, max_s, jitter)
        if budget_s is not None:
            delay = min(delay, max(0.0, budget_s - state.seconds_since_start))
        return max(0.0, delay)

    return wait


def _log_hook(what: str, level: int, describe: Callable[[BaseException], str] | None) -> Callable[[tenacity.RetryCallState], None]:
    def hook(state: tenacity.RetryCallState) -> None:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return  # a poll that is not done yet is no failure: nothing to say
        exc = outcome.exception()
        why = describe(exc) if describe is not None else _first_line(exc)
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        log.log(level, "%s: attempt %d failed (%s); retrying in %.1f s", what or "retry", state.attempt_number, why, sleep)

    return hook


def _kwargs(
    retry_on: Callable[[BaseException], bool],
    *,
    attempts: int | None = None,
    budget_s: float | None = None,
    first_s: float = 0.5,
    max_s: float = 30.0,
    jitter: bool = True,
    retry_after: Callable[[BaseException], float | None] | None = None,
    retry_result: Callable[[Any], bool] | None = None,
    what: str = "",
    level: int = logging.WARNING,
    describe: Callable[[BaseException], str] | None = None,
) -> dict:
    """tenacity's keywords for the policy (the keywords of `retrying`; `retry_result`: also retry on a result)."""
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    stops = []
    if attempts is not None:
        stops.append(tenacity.stop_after_attempt(attempts))
    if budget_s is not None:
        stops.append(tenacity.stop_after_delay(max(0.0, budget_s)))
    retry = tenacity.retry_if_exception(lambda exc: bool(retry_on(exc)))
    if retry_result is not None:
        retry = retry | tenacity.retry_if_result(retry_result)
    return {
        "retry": retry,
        "stop": tenacity.stop_any(*stops) if stops else tenacity.stop_never,
        "wait": _wait(first_s, max_s, jitter, budget_s, retry_after),
        "before_sleep": _log_hook(what, level, describe),
        "reraise": True,  # giving up raises the last exception itself, never tenacity.RetryError
    }


def retrying(retry_on: Callable[[BaseException], bool], **policy: Any) -> tenacity.Retrying:
    """A tenacity.Retrying with the policy (see the module docstring). Keywords: `attempts` and
    `budget_s` (either, both, or neither: retry until success) bound it; `first_s`, `max_s`, `jitter`
    shape the backoff; `retry_after(exc)` may name the wait for a failure (None: the backoff); `what`
    and `describe(exc)` word the log line (describe: say what failed without secrets; default: the
    exception's type and first line), logged at `level`."""
    return tenacity.Retrying(**_kwargs(retry_on, **policy))


def async_retrying(retry_on: Callable[[BaseException], bool], **policy: Any) -> tenacity.AsyncRetrying:
    """`retrying` for coroutines (waits with asyncio.sleep)."""
    return tenacity.AsyncRetrying(**_kwargs(retry_on, **policy))


def call(fn: Callable[[], T], retry_on: Callable[[BaseException], bool], **policy: Any) -> T:
    """fn() under the policy (keywords as `retrying`): its result, or the last exception once it
    gives up (or at once, for an exception retry_on refuses)."""
    return retrying(retry_on, **policy)(fn)


async def acall(fn: Callable[[], Awaitable[T]], retry_on: Callable[[BaseException], bool], **policy: Any) -> T:
    """`call` for an async fn: `await acall(lambda: client.get(...), retry_on, attempts=4)`."""
    return await async_retrying(retry_on, **policy)(fn)


def poll(
    check: Callable[[], T | None],
    *,
    every_s: float,
    budget_s: float,
    retry_on: Callable[[BaseException], bool] = lambda exc: False,
    what: str = "",
    level: int = logging.WARNING,
) -> T | None:
    """check() every `every_s` seconds until it returns something other than None, which is returned;
    None once `budget_s` has passed (the last wait is cut to end at the budget, where check() runs a
    last time). An exception from check() ends the poll unless `retry_on` accepts it (then it is
    logged and the poll goes on; still failing at the budget, it propagates). Status polls of
    Kubernetes objects use it: sicog.cluster.serving (a server's readiness), and a job's conditions."""
    kwargs = _kwargs(
        retry_on, budget_s=budget_s, first_s=every_s, max_s=every_s, jitter=False, retry_result=lambda result: result is None, what=what, level=level
    )
    kwargs["retry_error_callback"] = lambda state: state.outcome.result()  # out of time: None, or the last error raised
    return tenacity.Retrying(**kwargs)(check)
