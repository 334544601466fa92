"""Compile the cycle pipeline for Kubeflow, run it here with `kfp.local`, or submit and schedule it on Kubeflow.

There is one pipeline definition (pipelines/cycle.py) and no second orchestrator: locally each
component runs as a subprocess of this Python (SubprocessRunner without a venv), so the code that
runs is exactly the installed `sicog`.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

from sicog import store
from sicog.config import SicogConfig, for_cluster, parameter_dict
from sicog.errors import UserError


def compile_pipeline(out: str | Path, config: SicogConfig, root: str = "") -> Path:
    """Write the KFP IR YAML, with `config` as the default of the pipeline's config parameter (cluster.trainer
    auto resolved for the cluster: sicog.config.for_cluster) and `root` (the store folder runs keep their
    outputs in) as its default pipeline root."""
    from kfp import compiler

    from sicog.pipelines.cycle import cycle_pipeline

    config = for_cluster(config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        cycle_pipeline(config, root=root), str(out), pipeline_parameters={"config": parameter_dict(config), "sample_shards": list(range(config.sample.shards))}
    )
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


def run_local(config: SicogConfig, out: str | Path, ablations: bool = False, verbose: bool = False, series: str = "", oracle: bool = False) -> dict:
    """Run one cycle under kfp.local (`ablations`: also the uncurated model; `oracle`: with ablations, also
    the oracle model, which needs the world's truth); metrics.json, report.html and cycle.log land in `out`, a local
    folder or an s3:// URI. The run works in one folder: `out`, or with a `series` (a store folder) a
    new folder of the series (SERIES/cycles/<time>-<id>; the cycle starts from the series' newest
    promoted cycle, sicog.lineage). kfp.local keeps every artifact under that folder's `pipeline/`.
    A run folder in object storage is worked in locally and published once at the end, lineage.json
    last (its URIs are relative to the folder), so a cycle is sealed only when all of it is there."""
    from kfp import local

    from sicog.lineage import LINEAGE, cycle_folder
    from sicog.pipelines.cycle import cycle_pipeline
    from sicog.pipelines.local import thread_safe

    if oracle and config.data.catalog:
        from sicog.data.catalog import load_catalog

        if not load_catalog(config.data.catalog).truth:
            raise UserError(
                f"--oracle trains on the pool's true labels, and the catalog {config.data.catalog} has no `truth` role; add one or leave out --oracle"
            )
    run_uri = cycle_folder(series, uuid.uuid4().hex) if series else str(out)
    for uri in {run_uri, str(out)}:
        if store.is_remote(uri):
            store.check_access(uri)  # wrong credentials fail before any work
    remote = store.is_remote(run_uri)
    work = Path(tempfile.mkdtemp(prefix="sicog-cycle-")) if remote else store.local_path(run_uri).resolve()
    work.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "pipeline"), raise_on_error=True)
    params = dict(
        config=parameter_dict(config),
        ablations=ablations or oracle,
        oracle=oracle,
        run_uri=str(work),
        sample_shards=list(range(config.sample.shards)),
        series_uri=series,
    )
    sicog_cycle = cycle_pipeline()
    # kfp.local swaps the root logger's handlers and builtins.print per task (sicog.pipelines.local); the
    # last task out restores the ones of its time, which here are bound to this run's log, and the next
    # run of the process (--cycles N, evidence) would write there.
    root_handlers, root_print = logging.getLogger().handlers[:], builtins.print
    try:
        with thread_safe():
            _run(sicog_cycle, params, work, verbose)
    finally:
        logging.getLogger().handlers[:] = root_handlers
        builtins.print = root_print
    if remote:
        _publish(work, run_uri, last=LINEAGE)
        shutil.rmtree(work, ignore_errors=True)
    if store.join(out, "") != store.join(run_uri, ""):  # a series run: its report also lands in `out`
        for name in ("metrics.json", "report.html", "cycle.log"):
            if store.exists(store.join(run_uri, name)):
                store.write_bytes(store.join(out, name), store.read_bytes(store.join(run_uri, name)))
    return json.loads(store.read_text(store.join(out, "metrics.json")))


def _run(sicog_cycle, params: dict, work: Path, verbose: bool) -> None:
    """Run the pipeline; unless `verbose`, kfp.local's output goes to cycle.log and the terminal shows
    task starts and ends, progress bars and errors."""
    if verbose:
        sicog_cycle(**params)
        return
    # kfp.local warns that display names and caching options only matter on a cluster.
    warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
    with open(work / "cycle.log", "w") as log, contextlib.redirect_stdout(_LogFilter(log, sys.stdout)):
        try:
            sicog_cycle(**params)
        except Exception:
            sys.stderr.write(f"the cycle failed; full log: {work / 'cycle.log'}\n")
            raise


def _publish(folder: Path, uri: str, last: str) -> None:
    """Upload a local run folder to the store (every step's output folder carries its own manifest
    already), the file `last` (lineage.json: the seal of a finished cycle) after everything else."""
    seal = folder / last
    data = seal.read_bytes() if seal.is_file() else None
    seal.unlink(missing_ok=True)
    store.upload_dir(folder, uri)
    if data is not None:
        store.write_bytes(store.join(uri, last), data)


# --- Kubeflow Pipelines: one run, or a recurring schedule ------------------------------------------

CRON_FIELDS = ("seconds", "minutes", "hours", "day-of-month", "month", "day-of-week")


def check_cron(expression: str) -> str:
    """KFP schedules take six cron fields, seconds first; a five-field crontab line is the usual slip."""
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        hint = f" (did you mean '0 {expression}'?)" if len(fields) == 5 else ""
        raise UserError(f"--cron needs six fields ({' '.join(CRON_FIELDS)}), got {len(fields)}{hint}; e.g. '0 0 3 * * 1' is Mondays 03:00")
    return " ".join(fields)


def _pipeline_root(series: str, run_uri: str) -> str:
    """The store folder a cluster run keeps every output in: its own folder, else its series' folder.
    Cluster pods share nothing but the object store, so one of them is required, in object storage."""
    for name, uri in (("--series", series), ("--run-uri", run_uri)):
        if uri and not store.is_remote(uri):
            raise UserError(f"{name} must be in object storage (s3://bucket/prefix) for a cluster run, not {uri}")
    if not (series or run_uri):
        raise UserError("a cluster run needs --series or --run-uri in object storage: its outputs live there")
    return run_uri or series


def check_real_run(config: SicogConfig) -> None:
    """A cluster run trains a real model on the user's data: refuse, before any task runs, a config that
    would build the demo world or train the demo's tiny model on a cluster (those are for `sicog cycle`)."""
    if not config.data.catalog:
        raise UserError(
            "data.catalog is not set: a cluster run reads your datasets through a catalog (see `sicog data check`); "
            "the procedural demo world is for `sicog cycle`"
        )
    if not config.model.start:
        raise UserError(
            "model.start is not set: a cluster run starts from a model in the store (e.g. `sicog model assemble`, then "
            "`sicog store put`); the tiny demo model is for `sicog cycle`"
        )


def _client(host: str | None, namespace: str | None):
    import kfp

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.client.*")
    return kfp.Client(host=host, namespace=namespace or "kubeflow")


def _arguments(config: SicogConfig, series: str, run_uri: str, scorer: str, ablations: bool) -> dict:
    return dict(
        config=parameter_dict(for_cluster(config)),
        series_uri=series,
        run_uri=run_uri,
        scorer=scorer,
        ablations=ablations,
        sample_shards=list(range(config.sample.shards)),
    )


def submit(
    config: SicogConfig,
    *,
    host: str | None,
    series: str = "",
    run_uri: str = "",
    scorer: str = "",
    ablations: bool = False,
    experiment: str = "sicog",
    run_name: str | None = None,
    namespace: str | None = None,
) -> str:
    """Compile the pipeline for `config.cluster` and start one run on Kubeflow Pipelines, its pipeline
    root the run's (or the series') store folder; returns its id."""
    check_real_run(config)
    root = _pipeline_root(series, run_uri)
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory(prefix="sicog-submit-") as tmp:
        package = compile_pipeline(Path(tmp) / "sicog-cycle.yaml", config, root=root)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=_arguments(config, series, run_uri, scorer, ablations),
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
            pipeline_root=root,
            service_account=config.cluster.service_account,
        )
    return result.run_id


def schedule(
    config: SicogConfig,
    *,
    host: str | None,
    cron: str,
    series: str,
    name: str,
    scorer: str = "",
    ablations: bool = False,
    experiment: str = "sicog",
    namespace: str | None = None,
) -> str:
    """A recurring run: every firing is one cycle of the series, started from its last successful
    cycle (resolved at run time by the pipeline's first step), its outputs under the series' folder.
    One run at a time, no catch-up of missed firings. Returns the recurring run's id."""
    cron = check_cron(cron)
    if not series:
        raise UserError("a schedule needs --series: it is how each run finds the last cycle's model")
    check_real_run(config)
    root = _pipeline_root(series, "")
    client = _client(host, namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    with tempfile.TemporaryDirectory(prefix="sicog-schedule-") as tmp:
        package = compile_pipeline(Path(tmp) / "sicog-cycle.yaml", config, root=root)
        recurring = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=name,
            description=f"SICOG cycles of {series}",
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=_arguments(config, series, "", scorer, ablations),
            pipeline_package_path=str(package),
            pipeline_root=root,
            service_account=config.cluster.service_account,
        )
    return recurring.recurring_run_id
