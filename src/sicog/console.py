"""What a person watching a long step sees: one progress bar style and one status-line style.

`progress()` is the rich progress bar of every long step (description, bar, done/total, elapsed,
remaining); `say(who, message)` prints one flushed status line about a named thing (a training job,
a sampler server), so pod logs read the same whichever part of sicog wrote them.

Both follow sicog.logs: with SICOG_LOG_FORMAT=json (the images' default) a status line is one JSON
log object on stderr (logger sicog.status) and progress bars are off (a pod has no terminal);
otherwise `who: message` on stdout (stderr=True: stderr) and rich bars, as at a terminal.

    with progress() as bar:
        task = bar.add_task("sampling caption", total=n)
        bar.advance(task, k)
    say("server sicog-perception-1a2b3c4d5e", "ready at http://10.0.0.7:8000/v1")
    say("pytorchjob sicog-cycle-pretrain-1a2b", "could not delete it (403 Forbidden)", stderr=True)
"""

from __future__ import annotations

import logging

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sicog import logs


def progress() -> Progress:
    """A new (not started) rich Progress: description, bar, M/N done, elapsed, remaining. Use it as a
    context manager; a step passes the running one to whatever adds its own tasks to it. Disabled
    (draws nothing) when logs are JSON."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), disable=logs.json_enabled()
    )


def say(who: str, message: str, *, stderr: bool = False) -> None:
    """One status line `<who>: <message>`, flushed at once (pod logs), e.g.
    say("pytorchjob sicog-cycle-pretrain-1a2b", "running"); `stderr`: on standard error (a warning or a
    failure's details) instead of standard output. Logged on sicog.status (INFO; stderr: WARNING)."""
    logs.status_logger().log(logging.WARNING if stderr else logging.INFO, "%s: %s", who, message, extra={"to_stderr": stderr})
