"""Compile the cycle pipeline for Kubeflow, or run it here with `kfp.local`.

There is one pipeline definition (pipelines/cycle.py) and no second orchestrator: locally each
component runs as a subprocess of this Python (SubprocessRunner without a venv), so the code that
runs is exactly the installed `sicog`.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from pydantic import BaseModel

from sicog import store
from sicog.config import SicogConfig


def kfp_config(config: SicogConfig) -> dict:
    """The config as the pipeline's dict parameter. KFP parameters cannot hold null, so a null that
    is also its field's default is left out: each component validates the dict and gets it back."""

    def strip(model: BaseModel, data: dict) -> dict:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if value is None and field.default is None:
                data.pop(name, None)
            elif isinstance(value, BaseModel):
                strip(value, data[name])
        return data

    return strip(config, config.model_dump(mode="json"))


def compile_pipeline(out: str | Path, config: SicogConfig) -> Path:
    """Write the KFP IR YAML, with `config` as the default of the pipeline's config parameter."""
    from kfp import compiler

    from sicog.pipelines.cycle import sicog_cycle

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(sicog_cycle, str(out), pipeline_parameters={"config": kfp_config(config),
                                                                             "sample_shards": list(range(config.sample.shards))})
    return out


class _LogFilter(io.TextIOBase):
    """kfp.local prints every executor's full input and output JSON. Keep all of it in a log file and
    show the user only task starts and ends, the steps' progress bars and errors."""

    SHOW = ("Executing task", "finished with status", "━", "Error", "Traceback", "FAILURE")

    def __init__(self, log, terminal):
        self.log, self.terminal, self.pending = log, terminal, ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if any(key in line for key in self.SHOW):
                self.terminal.write(line.strip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()


def run_local(config: SicogConfig, out: str | Path, ablations: bool = False, verbose: bool = False) -> dict:
    """Run one cycle under kfp.local; metrics.json, report.html and cycle.log land in `out`, a local
    folder or an s3:// URI. kfp.local keeps the artifacts it hands between components under a local
    pipeline root: the out folder itself, or for s3:// a temporary work folder (removed after a
    successful run). With s3:// every step also publishes its output to OUT/steps/<step> (work_uri),
    and the store is checked first, so wrong credentials fail before any work."""
    from kfp import local

    from sicog.pipelines.cycle import sicog_cycle

    remote = store.is_remote(out)
    if remote:
        store.check_access(out)
        work = Path(tempfile.mkdtemp(prefix="sicog-cycle-"))
    else:
        work = store.local_path(out).resolve()
        work.mkdir(parents=True, exist_ok=True)
    out = str(out) if remote else str(work)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "pipeline"), raise_on_error=True)
    params = dict(config=kfp_config(config), ablations=ablations, publish_uri=out, work_uri=out,
                  sample_shards=list(range(config.sample.shards)))
    try:
        if verbose:
            sicog_cycle(**params)
        else:
            # kfp.local warns that display names and caching options only matter on a cluster.
            warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
            with open(work / "cycle.log", "w") as log, contextlib.redirect_stdout(_LogFilter(log, sys.stdout)):
                try:
                    sicog_cycle(**params)
                except Exception:
                    sys.stderr.write(f"the cycle failed; full log: {work / 'cycle.log'}\n")
                    raise
    finally:
        if remote and (work / "cycle.log").is_file():
            store.write_bytes(store.join(out, "cycle.log"), (work / "cycle.log").read_bytes())
    if remote:
        shutil.rmtree(work, ignore_errors=True)
    return json.loads(store.read_text(store.join(out, "metrics.json")))
