"""Compile the cycle pipeline for Kubeflow, or run it here with `kfp.local`.

There is one pipeline definition (pipelines/cycle.py) and no second orchestrator: locally each
component runs as a subprocess of this Python (SubprocessRunner without a venv), so the code that
runs is exactly the installed `sicog`.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

from sicog.config import SicogConfig


def compile_pipeline(out: str | Path, config: SicogConfig) -> Path:
    """Write the KFP IR YAML, with `config` as the default of the pipeline's config parameter."""
    from kfp import compiler

    from sicog.pipelines.cycle import sicog_cycle

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(sicog_cycle, str(out), pipeline_parameters={"config": config.model_dump(mode="json")})
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


def run_local(config: SicogConfig, out_dir: str | Path, ablations: bool = False, verbose: bool = False) -> dict:
    """Run one cycle under kfp.local; metrics.json, report.html and cycle.log land in `out_dir`."""
    from kfp import local

    from sicog.pipelines.cycle import sicog_cycle

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out_dir / "pipeline"), raise_on_error=True)
    params = dict(config=config.model_dump(mode="json"), ablations=ablations, publish_uri=str(out_dir))
    if verbose:
        sicog_cycle(**params)
    else:
        # kfp.local warns that display names and caching options only matter on a cluster.
        warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
        with open(out_dir / "cycle.log", "w") as log, contextlib.redirect_stdout(_LogFilter(log, sys.stdout)):
            try:
                sicog_cycle(**params)
            except Exception:
                sys.stderr.write(f"the cycle failed; full log: {out_dir / 'cycle.log'}\n")
                raise
    return json.loads((out_dir / "metrics.json").read_text())
