"""`sicog`: one subcommand per SICOG step, plus the whole cycle, the evidence runs and the pipeline.

Every subcommand takes `--config FILE` and repeated `--set key.sub=value` overrides, so a laptop and
a cluster job run the same command. User errors (bad config, missing files, bad URIs) print one line
and exit with status 2; tracebacks are for bugs.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from sicog import steps
from sicog.config import ConfigError, SicogConfig, load_config
from sicog.store import StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SICOG: self-improving systematic cognition for multimodal LLMs.")
model_app = typer.Typer(no_args_is_help=True, help="Model factory.")
pipeline_app = typer.Typer(no_args_is_help=True, help="The KFP pipeline.")
app.add_typer(model_app, name="model")
app.add_typer(pipeline_app, name="pipeline")
err = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (see configs/demo.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.sub=value (repeatable).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder or file.")]
WorldOpt = Annotated[Path, typer.Option("--world", help="World folder (image paths are relative to it).")]
ModelOpt = Annotated[Path, typer.Option("--model", help="Model folder (save_pretrained layout).")]


def user_errors(fn):
    """Turn user errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, StoreError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
        except FileNotFoundError as exc:
            err.print(f"[red]error:[/red] no such file: {exc.filename or exc}", highlight=False)
        except ValueError as exc:
            if os.environ.get("SICOG_DEBUG"):
                raise
            err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2)

    return wrapper


def _config(config: Optional[Path], overrides: Optional[list[str]]) -> SicogConfig:
    return load_config(config, overrides or [])


def _print(obj) -> None:
    Console().print_json(json.dumps(obj, default=str))


@app.command()
@user_errors
def world(out: OutOpt, config: ConfigOpt = None, set_: SetOpt = None):
    """Write the procedural demo world: images, splits and ground truth."""
    _print(steps.make_world(_config(config, set_), str(out)).get("counts", {}))


@model_app.command("init")
@user_errors
def model_init(world: WorldOpt, out: OutOpt, config: ConfigOpt = None, set_: SetOpt = None):
    """A fresh tiny LLaVA whose tokenizer is trained on the world's text."""
    typer.echo(steps.init_model(_config(config, set_), str(world), str(out)))


@app.command()
@user_errors
def train(
    stage: Annotated[str, typer.Option(help="warmup | align | pretrain | instruct")],
    data: Annotated[str, typer.Option(help=f"one of: {', '.join(steps.TRAIN_DATA)}")],
    model: ModelOpt,
    world: WorldOpt,
    out: OutOpt,
    curated: Annotated[Optional[Path], typer.Option(help="Curated folder (for data curated/uncurated).")] = None,
    name: Annotated[str, typer.Option(help="Run name in logs and lineage.")] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Train one stage (step 1 warm-up or step 4 stage 1 / 1.5 / 2)."""
    if stage not in ("warmup", "align", "pretrain", "instruct"):
        raise ValueError(f"unknown stage {stage!r}: choose warmup, align, pretrain or instruct")
    log = steps.train(_config(config, set_), stage, data, str(model), str(world), str(out), name or f"{stage}/{data}", str(curated) if curated else None)
    _print({k: log[k] for k in ("steps", "records", "train_seconds", "skipped") if k in log})


@app.command()
@user_errors
def warmup(
    task: Annotated[str, typer.Option(help="perception (DD + CoD) or reasoning (DA + CoT)")],
    model: ModelOpt,
    world: WorldOpt,
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Step 1: warm-up fine-tuning of the perception or reasoning model."""
    if task not in ("perception", "reasoning"):
        raise ValueError(f"unknown warm-up task {task!r}: choose perception or reasoning")
    log = steps.train(_config(config, set_), "warmup", task, str(model), str(world), str(out), f"{task}/warmup")
    _print({k: log[k] for k in ("steps", "records", "train_seconds", "skipped") if k in log})


@app.command()
@user_errors
def sample(
    task: Annotated[str, typer.Option(help="caption | vqa | text")],
    model: ModelOpt,
    world: WorldOpt,
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Step 2: sample candidates for a task's unlabeled pool into OUT/candidates.jsonl."""
    if task not in steps.POOLS:
        raise ValueError(f"unknown task {task!r}: choose caption, vqa or text")
    _print(steps.sample(_config(config, set_), task, str(model), str(world), str(out)))


@app.command()
@user_errors
def score(
    in_: Annotated[Path, typer.Option("--in", help="Candidates JSONL (the candidates contract).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Scored JSONL to write; rejected rows go beside it.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Step 3: self-consistency scores, best candidate and keep decision per instance."""
    if not in_.is_file():
        raise FileNotFoundError(2, "no such file", str(in_))
    tmp = out.parent / f".{out.name}.d"
    figures = steps.score(_config(config, set_), [str(in_)], str(tmp))
    (tmp / "scored.jsonl").replace(out)
    (tmp / "rejected.jsonl").replace(out.with_suffix(".rejected.jsonl"))
    _print(figures)


@app.command()
@user_errors
def curate(
    world: WorldOpt,
    scored: Annotated[list[Path], typer.Option(help="Scored folder(s) from `sicog score` / the pipeline (repeatable).")],
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Step 3: curated training records, ablation data and curation quality against ground truth."""
    _print(steps.curate(_config(config, set_), str(world), [str(s) for s in scored], str(out)))


@app.command("eval")
@user_errors
def eval_(
    model: Annotated[list[Path], typer.Option("--model", help="Model folder; NAME=PATH to name it (repeatable).")],
    world: WorldOpt,
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Held-out VQA accuracy and caption attribute recall of one or more models."""
    models = dict(str(m).split("=", 1) if "=" in str(m) else (m.name, str(m)) for m in model)
    results = steps.evaluate(_config(config, set_), models, str(world), str(out))
    _print({name: {k: v for k, v in r.items() if k != "lineage"} for name, r in results.items()})


def _summary(metrics: dict) -> None:
    from rich.table import Table

    table = Table(title=f"held-out (world seed {metrics['world']['seed']})")
    for col in ("model", "VQA accuracy", "caption attribute recall", "step budget"):
        table.add_column(col)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, m in metrics["heldout"].items():
        table.add_row(name, fmt(m["vqa_accuracy"]), fmt(m["caption_attribute_recall"]), metrics["steps"].get(name, ""))
    Console().print(table)
    cur = metrics["curation"]
    Console().print(
        f"curation: VQA kept {fmt(cur['vqa'].get('kept_accuracy'))} vs mean candidate {fmt(cur['vqa'].get('mean_candidate_accuracy'))}; "
        f"captions kept {fmt(cur['caption'].get('kept_attribute_recall'))} vs mean candidate {fmt(cur['caption'].get('mean_candidate_attribute_recall'))}",
        highlight=False,
    )


@app.command()
@user_errors
def cycle(
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    ablations: Annotated[bool, typer.Option(help="Also train the uncurated ablation.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print the full kfp.local logs (always kept in OUT/cycle.log).")] = False,
):
    """One whole SICOG cycle through kfp.local: OUT/metrics.json and OUT/report.html."""
    from sicog.pipelines.run import run_local

    metrics = run_local(_config(config, set_), out, ablations=ablations, verbose=verbose)
    _summary(metrics)
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
@user_errors
def evidence(
    out: OutOpt,
    seeds: Annotated[int, typer.Option(help="Number of world seeds (0..N-1 added to world.seed).")] = 3,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Repeat the cycle over seeds, with the uncurated ablation; write a table of means and spreads."""
    from sicog.pipelines.run import run_local
    from sicog.report.evidence import write_evidence

    base = _config(config, set_)
    per_seed = []
    for i in range(seeds):
        cfg = base.model_copy(deep=True)
        cfg.world.seed = base.world.seed + i
        cfg.seed = base.seed + i
        err.print(f"[bold]evidence: seed {cfg.world.seed} ({i + 1}/{seeds})[/bold]")
        per_seed.append(run_local(cfg, out / f"seed-{cfg.world.seed}", ablations=True))
    command = "sicog " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    typer.echo(Path(write_evidence(out, per_seed, command)).read_text())


@pipeline_app.command("compile")
@user_errors
def pipeline_compile(out: OutOpt, config: ConfigOpt = None, set_: SetOpt = None):
    """Write the KFP IR YAML that Kubeflow runs (config as the default parameter)."""
    from sicog.pipelines.run import compile_pipeline

    typer.echo(compile_pipeline(out, _config(config, set_)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
