"""Compile the cycle pipeline for Kubeflow, run it here with `kfp.local`, or submit and schedule it on Kubeflow.

There is one pipeline definition (pipelines/cycle.py) and no second orchestrator: locally each
component runs as a subprocess of this Python (SubprocessRunner without a venv), so the code that
runs is exactly the installed `sicog`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from sicog import store
from sicog.config import SicogConfig, parameter_dict


def compile_pipeline(out: str | Path, config: SicogConfig) -> Path:
    """Write the KFP IR YAML, with `config` as the default of the pipeline's config parameter."""
    from kfp import compiler

    from sicog.pipelines.cycle import cycle_pipeline

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(cycle_pipeline(config), str(out), pipeline_parameters={"config": parameter_dict(config),
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


def run_local(config: SicogConfig, out: str | Path, ablations: bool = False, verbose: bool = False, series: str = "") -> dict:
    """Run one cycle under kfp.local; metrics.json, report.html and cycle.log land in `out`, a local
    folder or an s3:// URI. kfp.local keeps the artifacts it hands between components under a local
    pipeline root: the out folder itself, or for s3:// a temporary work folder (removed after a
    successful run). With s3:// every step also publishes its output to OUT/steps/<step> (work_uri),
    and the store is checked first, so wrong credentials fail before any work. With a `series` (a store
    folder), the cycle starts from the series' newest promoted cycle and keeps its steps and lineage
    in a new folder of the series (sicog.lineage); the report still lands in `out`."""
    from kfp import local

    from sicog.pipelines.cycle import cycle_pipeline

    remote = store.is_remote(out)
    if remote:
        store.check_access(out)
        work = Path(tempfile.mkdtemp(prefix="sicog-cycle-"))
    else:
        work = store.local_path(out).resolve()
        work.mkdir(parents=True, exist_ok=True)
    out = str(out) if remote else str(work)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "pipeline"), raise_on_error=True)
    params = dict(config=parameter_dict(config), ablations=ablations, publish_uri=out, work_uri="" if series else out,
                  sample_shards=list(range(config.sample.shards)), series_uri=series)
    sicog_cycle = cycle_pipeline()
    # kfp.local swaps the root logger's handlers per task, and its ParallelFor threads can restore one
    # bound to this run's log; the next run of the process (--cycles N, evidence) would write there.
    root_handlers = logging.getLogger().handlers[:]
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
        logging.getLogger().handlers[:] = root_handlers
        if remote and (work / "cycle.log").is_file():
            store.write_bytes(store.join(out, "cycle.log"), (work / "cycle.log").read_bytes())
    if remote:
        shutil.rmtree(work, ignore_errors=True)
    return json.loads(store.read_text(store.join(out, "metrics.json")))


# --- Kubeflow Pipelines: one run, or a recurring schedule ------------------------------------------

CRON_FIELDS = ("seconds", "minutes", "hours", "day-of-month", "month", "day-of-week")


def check_cron(expression: str) -> str:
    """KFP schedules take six cron fields, seconds first; a five-field crontab line is the usual slip."""
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        hint = f" (did you mean '0 {expression}'?)" if len(fields) == 5 else ""
        raise ValueError(f"--cron needs six fields ({' '.join(CRON_FIELDS)}), got {len(fields)}{hint}; e.g. '0 0 3 * * 1' is Mondays 03:00")
    return " ".join(fields)


def _check_cluster_store(config: SicogConfig, series: str, work_uri: str) -> None:
    # Cluster pods share nothing but the object store: a series or work_uri there is required for
    # PyTorchJobs (their pods read inputs from it) and for a series (runs find each other through it).
    for name, uri in (("--series", series), ("--work-uri", work_uri)):
        if uri and not store.is_remote(uri):
            raise ValueError(f"{name} must be in object storage (s3://bucket/prefix) for a cluster run, not {uri}")
    if config.cluster.trainer == "pytorchjob" and not (series or work_uri):
        raise ValueError("cluster.trainer pytorchjob needs --series or --work-uri in object storage: the jobs' pods read their inputs there")


def _client(host: str | None, namespace: str | None):
    import kfp

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.client.*")
    return kfp.Client(host=host, namespace=namespace or "kubeflow")


def _arguments(config: SicogConfig, series: str, work_uri: str, scorer: str, ablations: bool) -> dict:
    return dict(config=parameter_dict(config), series_uri=series, work_uri=work_uri, scorer=scorer, ablations=ablations,
                sample_shards=list(range(config.sample.shards)))


def submit(config: SicogConfig, *, host: str | None, series: str = "", work_uri: str = "", scorer: str = "", ablations: bool = False,
           experiment: str = "sicog", run_name: str | None = None, namespace: str | None = None) -> str:
    """Compile the pipeline for `config.cluster` and start one run on Kubeflow Pipelines; returns its id."""
    _check_cluster_store(config, series, work_uri)
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory(prefix="sicog-submit-") as tmp:
        package = compile_pipeline(Path(tmp) / "sicog-cycle.yaml", config)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=_arguments(config, series, work_uri, scorer, ablations), run_name=run_name,
            experiment_name=experiment, namespace=namespace, service_account=config.cluster.service_account)
    return result.run_id


def schedule(config: SicogConfig, *, host: str | None, cron: str, series: str, name: str, scorer: str = "", ablations: bool = False,
             experiment: str = "sicog", namespace: str | None = None) -> str:
    """A recurring run: every firing is one cycle of the series, started from its last successful
    cycle (resolved at run time by the pipeline's first step). One run at a time, no catch-up of
    missed firings. Returns the recurring run's id."""
    cron = check_cron(cron)
    if not series:
        raise ValueError("a schedule needs --series: it is how each run finds the last cycle's model")
    _check_cluster_store(config, series, "")
    client = _client(host, namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    with tempfile.TemporaryDirectory(prefix="sicog-schedule-") as tmp:
        package = compile_pipeline(Path(tmp) / "sicog-cycle.yaml", config)
        recurring = client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, description=f"SICOG cycles of {series}", cron_expression=cron,
            max_concurrency=1, no_catchup=True, params=_arguments(config, series, "", scorer, ablations),
            pipeline_package_path=str(package), service_account=config.cluster.service_account)
    return recurring.recurring_run_id
