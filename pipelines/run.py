"""Compile the cycle pipeline for Kubeflow, or run it here with `kfp.local`.

There is one pipeline definition (pipelines/cycle.py) and no second orchestrator: locally each
component runs as a subprocess of this Python (SubprocessRunner without a venv), so the code that
runs is exactly the installed `sicog`.
"""

from __future__ import annotations

import json
import logging
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


def run_local(config: SicogConfig, out_dir: str | Path, ablations: bool = False, verbose: bool = False) -> dict:
    """Run one cycle under kfp.local; metrics.json and report.html land in `out_dir`."""
    from kfp import local

    from sicog.pipelines.cycle import sicog_cycle

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if not verbose:
        # kfp.local logs every executor input/output in full; keep task starts/ends and errors.
        logging.getLogger("kfp").setLevel(logging.WARNING)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out_dir / "pipeline"), raise_on_error=True)
    sicog_cycle(config=config.model_dump(mode="json"), ablations=ablations, publish_uri=str(out_dir))
    return json.loads((out_dir / "metrics.json").read_text())
