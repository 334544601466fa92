"""What a step reads and where it writes, named by its caller.

A component (or a CLI command) builds a `StepIO`: the step's name, the URI of its output folder and
its named inputs (URIs: a local path, file:// or s3://). `open_step` turns them into local folders
for the step's body: inputs are the paths themselves locally, else verified downloads; the output is
written in place locally, else staged and published with its manifest on success (entered first, so
wrong credentials fail before any work). On success it writes the step's files beside its output:

- `step.json`: the step's own figures, seconds and peak RSS;
- `timings.json`: its row merged with the rows of the inputs it read, so the report at the end of a
  cycle knows every step's timings without a second orchestrator;
- `quarantine.jsonl`: the bad inputs it set aside, with their reasons (when there are any).

There is no name table and no signature matching: what is an input is what the caller put in `inputs`.

While the step is open, log lines carry its name and the cycle its caller passes (sicog.logs); with
JSON logs (the images) the process's logging is set up here too, since a KFP task pod runs the step
function with no entry point of sicog's before it.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sicog import logs, store
from sicog.config import SicogConfig, validate_config
from sicog.records import write_json, write_jsonl

log = logging.getLogger("sicog.steps")
# An input: one URI, several (a list), or several named ones (a dict); None: not given.
InputURI = str | list[str] | dict[str, str] | None


@dataclass
class StepIO:
    """A step's named inputs and the one address of its output, as its caller knows them."""

    name: str  # the step's row in timings.json, e.g. "train:cycle/pretrain"
    out: str  # the output folder's URI: the artifact's own URI in the pipeline
    inputs: dict[str, InputURI] = field(default_factory=dict)


@dataclass
class Step:
    """The open step: local folders of its inputs and output, and what it reports."""

    out: Path
    inputs: dict[str, Path | list[Path] | dict[str, Path] | None]
    figures: dict = field(default_factory=dict)  # -> step.json (and the step's KFP metadata)
    quarantine: list[dict] = field(default_factory=list)  # -> quarantine.jsonl, counted in timings
    timings: dict = field(default_factory=dict)  # rows of earlier steps read other than as input folders

    def input(self, name: str) -> Path:
        """The local folder of a required single input."""
        path = self.inputs.get(name)
        if not isinstance(path, Path):
            raise TypeError(f"step input {name!r} is not one URI: {path!r}")
        return path

    def folders(self) -> list[Path]:
        """Every input folder, for timings.json."""
        found: list[Path] = []
        for value in self.inputs.values():
            if isinstance(value, Path):
                found.append(value)
            elif isinstance(value, list):
                found += value
            elif isinstance(value, dict):
                found += list(value.values())
        return found


def as_config(config: SicogConfig | dict) -> SicogConfig:
    return config if isinstance(config, SicogConfig) else validate_config(config)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


@contextmanager
def open_step(
    io: StepIO,
    *,
    cycle: int | None = None,
    output: Callable[[str], AbstractContextManager[Path]] = store.local_output,
    input: Callable[[str], AbstractContextManager[Path]] = store.local_input,  # noqa: A002
    record: bool = True,
) -> Iterator[Step]:
    """Run a step's body on local folders (see the module docstring). `cycle`: the config's cycle
    number, for the log lines. `output` and `input`: how the output and input folders are opened
    (training ranks share one output folder, and one copy of each input per node; see sicog.train).
    `record`: write the step's files (False on every training rank but the main one)."""
    if logs.json_enabled():
        logs.configure()
    with ExitStack() as stack:
        stack.enter_context(logs.context(step=io.name, cycle=cycle))
        out = stack.enter_context(output(io.out))
        fetch = lambda uri: stack.enter_context(input(uri)) if uri else None  # noqa: E731
        inputs: dict = {}
        for key, value in io.inputs.items():
            if isinstance(value, dict):
                inputs[key] = {k: fetch(v) for k, v in value.items()}
            elif isinstance(value, list):
                inputs[key] = [fetch(v) for v in value]
            else:
                inputs[key] = fetch(value)
        step = Step(out=out, inputs=inputs)
        log.info("step %s: started", io.name)
        start = time.perf_counter()
        try:
            yield step
        except BaseException as exc:  # the error itself is reported by whoever handles it; this line carries the step
            log.info("step %s: failed after %.1f s (%s)", io.name, time.perf_counter() - start, type(exc).__name__)
            raise
        seconds = round(time.perf_counter() - start, 3)
        if record:
            _record(io.name, step, seconds)
        log.info("step %s: done in %.1f s (peak RSS %.0f MB)", io.name, seconds, peak_rss_mb())


def _record(name: str, step: Step, seconds: float) -> None:
    rss = round(peak_rss_mb(), 1)
    quarantined = step.figures.get("quarantined", len(step.quarantine))
    timings: dict = dict(step.timings)
    for folder in step.folders():
        timings.update(read_json(folder / "timings.json", {}))
    timings[name] = {"seconds": seconds, "peak_rss_mb": rss, "quarantined": quarantined, "failures": step.figures.get("failures", 0)}
    if step.quarantine:
        write_jsonl(step.out / "quarantine.jsonl", step.quarantine)
    write_json(step.out / "step.json", {"step": name, "seconds": seconds, "peak_rss_mb": rss, **step.figures, "quarantined": quarantined})
    write_json(step.out / "timings.json", timings)
