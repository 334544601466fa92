"""`sicog`: one subcommand per SICOG step, plus the whole cycle, the evidence runs and the pipeline.

Every subcommand takes `--config FILE` and repeated `--set key.sub=value` overrides, so a laptop and
a cluster job run the same command. User errors (bad config, missing files, bad URIs) print one line
and exit with status 2; tracebacks are for bugs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from sicog import logs, store
from sicog.config import SicogConfig, load_config
from sicog.data.training import TRAIN_DATA
from sicog.errors import UserError
from sicog.steps import StepIO
from sicog.train.request import STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SICOG: self-improving systematic cognition for multimodal LLMs.")
model_app = typer.Typer(no_args_is_help=True, help="Model factory.")
pipeline_app = typer.Typer(no_args_is_help=True, help="The KFP pipeline.")
app.add_typer(model_app, name="model")
app.add_typer(pipeline_app, name="pipeline")
serve_app = typer.Typer(no_args_is_help=True, help="Long-running services.")
app.add_typer(serve_app, name="serve")
store_app = typer.Typer(no_args_is_help=True, help="Copy published folders to and from the store (manifest-verified).")
app.add_typer(store_app, name="store")
job_app = typer.Typer(no_args_is_help=True, help="One training stage as a Kubeflow Trainer v2 TrainJob (or a PyTorchJob): render it for review, or run it.")
app.add_typer(job_app, name="job")
err = Console(stderr=True)

ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML config file or store URI (see configs/demo.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.sub=value (repeatable).")]
SeriesOpt = Annotated[str, typer.Option(help="Store folder of a series of cycles: start from its last successful cycle's model and record this one there.")]
ScorerOpt = Annotated[Optional[str], typer.Option("--scorer", help="HOST:PORT of a `sicog serve scorer` service to embed with (overrides curate.scorer).")]
# Step inputs and outputs are store URIs: a local folder, file://... or s3://bucket/key (see sicog.store).
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output folder or file (local path or s3://bucket/key).")]
WorldOpt = Annotated[str, typer.Option("--world", help="World folder (image paths are relative to it); local path or s3:// URI.")]
ModelOpt = Annotated[str, typer.Option("--model", help="Model folder (save_pretrained layout); local path or s3:// URI.")]


def error(text: str) -> None:
    """A user error's one line on stderr: `error: ...` (in red at a terminal), or a JSON log line (SICOG_LOG_FORMAT=json)."""
    if logs.json_enabled():
        logging.getLogger("sicog.cli").error(text)
    else:
        err.print(f"[red]error:[/red] {text}", highlight=False, soft_wrap=True)  # one line, however narrow the terminal


def user_errors(fn):
    """Turn user errors into one line on stderr and exit status 2 (SICOG_DEBUG=1: their traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:  # ConfigError and StoreError are UserErrors too; anything else is a bug
            if os.environ.get("SICOG_DEBUG"):
                raise
            error(str(exc))
        except FileNotFoundError as exc:
            error(f"no such file: {exc.filename or exc}")
        raise typer.Exit(2)

    return wrapper


def _config(config: Optional[str], overrides: Optional[list[str]]) -> SicogConfig:
    """`--config` is a file, or a store URI: a training job's pods read the run's config from the store."""
    if config is not None and store.is_remote(config):
        with store.local_input(config) as path:
            return load_config(path, overrides or [])
    return load_config(config, overrides or [])


def _print(obj) -> None:
    """A command's result on stdout: indented JSON at a terminal, one compact line with JSON logs (pods)."""
    if logs.json_enabled():
        typer.echo(json.dumps(obj, default=str))
    else:
        Console().print_json(json.dumps(obj, default=str))


@app.command()
@user_errors
def world(out: OutOpt, config: ConfigOpt = None, set_: SetOpt = None):
    """Write the cycle's data: the catalog of data.catalog, or the procedural demo world (images, splits, ground truth)."""
    from sicog.steps.world import make_world

    _print(make_world(_config(config, set_), StepIO("world", str(out))).get("counts", {}))


@model_app.command("init")
@user_errors
def model_init(world: WorldOpt, out: OutOpt, config: ConfigOpt = None, set_: SetOpt = None):
    """A fresh tiny LLaVA whose tokenizer is trained on the world's text (or model.start, as it is)."""
    from sicog.steps.model import init_model

    typer.echo(init_model(_config(config, set_), StepIO("model-init", str(out), {"world": str(world)})) or str(out))


@model_app.command("assemble")
@user_errors
def model_assemble(
    vision: Annotated[Path, typer.Option(help="CLIP (vision) checkpoint folder, e.g. CLIP-ViT-L/14-336.")],
    llm: Annotated[Path, typer.Option(help="Causal LM checkpoint folder with its tokenizer, e.g. Qwen2-7B-Instruct.")],
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """A LLaVA model from a CLIP tower and an LM on disk, with a fresh projector (paper Sec. 4 set-up), in bf16 when the config trains in bf16."""
    from sicog.models import assemble_model

    cfg = _config(config, set_)
    typer.echo(assemble_model(vision, llm, out, seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code, dtype=cfg.train.weights_dtype))


TrainDataOpt = Annotated[str, typer.Option("--data", help=f"Training data, one of: {', '.join(TRAIN_DATA)} (stage dpo: names the task).")]
Step1TaskOpt = Annotated[str, typer.Option("--task", help="perception (DD + CoD) or reasoning (DA + CoT) annotated records.")]
TRAIN_SUMMARY = ("steps", "records", "train_seconds", "tokens_per_second", "world_size", "gradient_accumulation_steps", "skipped")


def _trained(run, *args):
    """Run a training backend (or step); a failed training process is one line and exit status 1 (its own error is above)."""
    from sicog.train.backends import TrainError

    try:
        return run(*args)
    except TrainError as exc:
        error(str(exc))
        raise typer.Exit(1) from None


@app.command()
@user_errors
def train(
    stage: Annotated[str, typer.Option(help=" | ".join(STAGES))],
    data: TrainDataOpt,
    model: ModelOpt,
    world: WorldOpt,
    out: OutOpt,
    curated: Annotated[Optional[str], typer.Option(help="Curated folder (for data curated/uncurated); local path or s3:// URI.")] = None,
    pairs: Annotated[Optional[str], typer.Option(help="Preference pairs folder from `sicog dpo-pairs` (stage dpo); local path or s3:// URI.")] = None,
    name: Annotated[str, typer.Option(help="Run name in logs and lineage (default STAGE/DATA).")] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Train one stage (step 1 warm-up or DPO, step 4 stage 1 / 1.5 / 2) under torchrun with train.nproc ranks
    on this machine; a rerun into the same OUT continues from its last checkpoint."""
    from sicog.train.backends import torchrun
    from sicog.train.request import TrainRequest

    request = TrainRequest.of(
        _config(config, set_),
        stage=stage,
        data=data,
        name=name or f"{stage}/{data}",
        model=str(model),
        world=str(world),
        out=str(out),
        curated=curated or None,
        pairs=pairs or None,
    )
    log = _trained(torchrun, request)
    _print({k: log[k] for k in TRAIN_SUMMARY if k in log})


@app.command("dpo-pairs")
@user_errors
def dpo_pairs(task: Step1TaskOpt, model: ModelOpt, world: WorldOpt, out: OutOpt, config: ConfigOpt = None, set_: SetOpt = None):
    """DPO variant of step 1: chosen = annotated answer, rejected = MODEL's answer on a corrupted image."""
    from sicog.steps.warmup import dpo_pairs as run

    _print(run(_config(config, set_), StepIO(f"dpo-pairs:{task}", str(out), {"model": str(model), "world": str(world)}), task))


@app.command()
@user_errors
def warmup(task: Step1TaskOpt, model: ModelOpt, world: WorldOpt, out: OutOpt, config: ConfigOpt = None, set_: SetOpt = None):
    """Step 1: warm-up of the perception or reasoning model (SFT, or DPO with train.step1=dpo: pairs first,
    into OUT/dpo-pairs), under torchrun on this machine; a rerun into the same OUT continues from its last checkpoint."""
    from sicog.steps.warmup import warmup as run
    from sicog.train.backends import torchrun

    io = StepIO(f"train:{task}/warmup", str(out), {"model": str(model), "world": str(world)})
    log = _trained(run, _config(config, set_), io, task, torchrun)["log"]
    _print({k: log[k] for k in TRAIN_SUMMARY if k in log})


@app.command()
@user_errors
def sample(
    task: Annotated[str, typer.Option(help="caption | vqa | text")],
    world: WorldOpt,
    out: OutOpt,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Model folder (local backend); local path or s3:// URI. Text task: the backbone LLM answers (paper App. A), extracted from this LLaVA, or this causal LM itself.",
        ),
    ] = "",
    shard: Annotated[Optional[int], typer.Option(help="Sample only this shard (0-based) of sample.shards; default: all, then collect.")] = None,
    shards: Annotated[Optional[int], typer.Option(help="Number of shards (sets sample.shards).")] = None,
    work: Annotated[Optional[str], typer.Option(help="Where shard chunks live and resume from (store URI); default: OUT/work, or OUT with --shard.")] = None,
    endpoint: Annotated[
        Optional[str],
        typer.Option(
            help="OpenAI-compatible server (TGI, vLLM, SGLang, ...) to sample from: sets sample.endpoint (and sample.engine=openai where the config says local)."
        ),
    ] = None,
    served_model: Annotated[Optional[str], typer.Option(help="Model name sent to the server (sets sample.served_model).")] = None,
    backbone: Annotated[
        Optional[str], typer.Option(help="Text task: a separate backbone LLM (causal-LM folder or s3:// URI) to answer with (sets sample.backbone).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Step 2: sample candidates for a task's unlabeled pool into OUT/candidates.jsonl, shard by shard;
    re-running the same command resumes finished chunks. Text-only prompts are answered by the
    backbone LLM (paper App. A); candidates record the model that produced them."""
    from sicog.steps.sample import POOLS, sample_shard
    from sicog.steps.sample import sample as sample_all

    if task not in POOLS:
        raise UserError(f"unknown task {task!r}: choose caption, vqa or text")
    extra = [f"sample.shards={shards}"] if shards is not None else []
    extra += [f"sample.endpoint={endpoint}"] if endpoint else []
    extra += [f"sample.served_model={served_model}"] if served_model else []
    extra += [f"sample.backbone={backbone}"] if backbone else []
    cfg = _config(config, (set_ or []) + extra)
    if endpoint and cfg.sample.engine == "local":
        cfg.sample.engine = "openai"
    if cfg.sample.engine == "local" and not model and not (task == "text" and cfg.sample.backbone):
        raise UserError("--model is needed with the local engine (or pass --endpoint URL)")
    inputs = {"world": world, "model": model or None}
    if shard is not None:
        _print(sample_shard(cfg, StepIO(f"sample:{task}:shard-{shard:05d}", out, inputs), task, shard, work or out))
        return
    _print(sample_all(cfg, StepIO(f"collect:{task}", out, inputs), task, work))


annotate_app = typer.Typer(no_args_is_help=True, help="Step-1 training data: CoD from a teacher, DA + CoT from LLaVA-CoT.")
app.add_typer(annotate_app, name="annotate")


@annotate_app.command("cod")
@user_errors
def annotate_cod(
    in_: Annotated[Path, typer.Option("--in", help="Caption records (LLaVA JSONL/JSON: image + original caption).")],
    out: OutOpt,
    endpoint: Annotated[Optional[str], typer.Option(help="The teacher's OpenAI-compatible server (sets annotate.endpoint).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Teacher model name sent to the server (sets annotate.served_model).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Image root (default: the --in file's folder).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """CoD + DD captions from a teacher model into OUT/annotated.jsonl (failures in OUT/quarantine.jsonl)."""
    if not in_.is_file():
        raise FileNotFoundError(2, "no such file", str(in_))
    extra = [f"annotate.endpoint={endpoint}"] if endpoint else []
    extra += [f"annotate.served_model={model}"] if model else []
    from sicog.steps.annotate import annotate_cod as run

    _print(run(_config(config, (set_ or []) + extra), StepIO("annotate:cod", out, {"captions": str(in_)}), str(images) if images else None))


@annotate_app.command("cot")
@user_errors
def annotate_cot(
    in_: Annotated[Path, typer.Option("--in", help="LLaVA-CoT records (JSON array or JSONL) with tagged answers.")],
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """DA + structured CoT records from LLaVA-CoT data into OUT/annotated.jsonl (failures in OUT/quarantine.jsonl)."""
    if not in_.is_file():
        raise FileNotFoundError(2, "no such file", str(in_))
    from sicog.steps.annotate import annotate_cot as run

    _print(run(_config(config, set_), StepIO("annotate:cot", out, {"llava_cot": str(in_)})))


@app.command()
@user_errors
def score(
    in_: Annotated[list[str], typer.Option("--in", help="Candidates JSONL, or a folder holding candidates.jsonl (repeatable; local path or s3:// URI).")],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (scored.jsonl + rejected.jsonl), or a NAME.jsonl (+ NAME.rejected.jsonl beside it); local path or s3:// URI. `sicog curate --scored` reads either.",
        ),
    ],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    scorer: ScorerOpt = None,
):
    """Step 3: self-consistency scores, best candidate and keep decision per instance."""
    import tempfile

    from sicog.steps.score import REJECTED_FILE, SCORED_FILE, scored_files
    from sicog.steps.score import score as run

    for uri in in_:
        if not store.is_remote(uri) and not store.local_path(uri).exists():
            raise FileNotFoundError(2, "no such file", uri)
    cfg = _config(config, set_)
    if not out.rstrip("/").endswith(".jsonl"):
        _print(run(cfg, StepIO("score", out, {"candidates": list(in_)}), scorer=scorer))
        return
    with tempfile.TemporaryDirectory(prefix="sicog-score-") as tmp:
        figures = run(cfg, StepIO("score", tmp, {"candidates": list(in_)}), scorer=scorer)
        for name, uri in zip((SCORED_FILE, REJECTED_FILE), scored_files(out)):
            store.write_bytes(uri, (Path(tmp) / name).read_bytes())
    _print(figures)


@app.command()
@user_errors
def curate(
    world: WorldOpt,
    scored: Annotated[
        list[str],
        typer.Option(
            help="What `sicog score --out` wrote: a folder, or a NAME.jsonl with NAME.rejected.jsonl beside it; or the pipeline's scored folder (repeatable; local or s3://)."
        ),
    ],
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Step 3: curated training records, ablation data and curation quality against ground truth."""
    import tempfile

    from sicog.steps.curate import curate as run
    from sicog.steps.score import REJECTED_FILE, SCORED_FILE, scored_files

    cfg = _config(config, set_)
    with tempfile.TemporaryDirectory(prefix="sicog-scored-") as tmp:
        folders = []
        for n, uri in enumerate(map(str, scored)):
            if not uri.rstrip("/").endswith(".jsonl"):
                folders.append(uri)
                continue
            folder = Path(tmp) / str(n)  # a scored file and its rejected rows, as the folder curate reads
            folder.mkdir()
            for name, part in zip((SCORED_FILE, REJECTED_FILE), scored_files(uri)):
                if not store.exists(part):
                    raise FileNotFoundError(2, "no such file", part)
                (folder / name).write_bytes(store.read_bytes(part))
            folders.append(str(folder))
        _print(run(cfg, StepIO("curate", str(out), {"world": str(world), "scored": folders})))


@app.command("eval")
@user_errors
def eval_(
    model: Annotated[list[str], typer.Option("--model", help="Model folder or s3:// URI; NAME=PATH to name it (repeatable).")],
    world: WorldOpt,
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Held-out VQA accuracy and caption attribute recall of one or more models, plus the lmms-eval
    benchmarks of eval.benchmarks (e.g. --set 'eval.benchmarks=[mmstar, sicog_heldout_vqa]')."""
    from sicog.steps.evaluate import evaluate

    models = dict(m.split("=", 1) if "=" in m else (m.rstrip("/").rsplit("/", 1)[-1], m) for m in model)
    results = evaluate(_config(config, set_), StepIO("evaluate", str(out), {"world": str(world), "models": models}))
    _print({name: {k: v for k, v in r.items() if k != "lineage"} for name, r in results.items()})


benchmarks_app = typer.Typer(no_args_is_help=True, help="The public benchmarks' data (eval.benchmarks through lmms-eval).")
app.add_typer(benchmarks_app, name="benchmarks")


@benchmarks_app.command("prefetch")
@user_errors
def benchmarks_prefetch(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Where to publish the cache (default: eval.datasets_cache).")] = None,
):
    """Fill the benchmarks' dataset cache where the Hugging Face Hub is reachable (lmms-eval's own loading of
    each eval.benchmarks dataset into an HF_HOME folder) and publish it: evaluate tasks then run offline on it."""
    from sicog.evaluate.lmms import prefetch

    cfg = _config(config, set_)
    out = out or cfg.eval.datasets_cache
    if not out:
        raise UserError("give --out or set eval.datasets_cache: where the benchmarks' dataset cache is published")
    if not cfg.eval.benchmarks:
        raise UserError("eval.benchmarks is empty: no benchmark data to fetch")
    with store.local_output(out) as folder:
        index = prefetch(cfg.eval.benchmarks, folder)
    typer.echo(f"{out}: {', '.join(f'{b} ({repo})' for b, repo in index['benchmarks'].items()) or 'no hub datasets (held-out tasks only)'}")


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
    oracle: Annotated[
        bool, typer.Option(help="Also train the oracle (stage 1.5 on the pool with its true labels: needs the world's truth); implies --ablations.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print the full kfp.local logs (always kept in OUT/cycle.log).")] = False,
    scorer: ScorerOpt = None,
    series: SeriesOpt = "",
    cycles: Annotated[
        int,
        typer.Option(
            "--cycles",
            min=1,
            help="Run N cycles one after another as a series, each from the newest promoted cycle: OUT/run-<i>/ per run, the series in --series (default OUT/series).",
        ),
    ] = 1,
):
    """One whole SICOG cycle through kfp.local: OUT/metrics.json and OUT/report.html. With --cycles N, N
    cycles of a series, each gated for promotion (`promote` in the config)."""
    from sicog.pipelines.run import run_local

    cfg = _config(config, set_)
    if scorer is not None:
        cfg.curate.scorer = scorer
    if cycles > 1:
        series = series or store.join(out, "series")
    for run in range(1, cycles + 1):
        run_out = out if cycles == 1 else store.join(out, f"run-{run}")
        if cycles > 1:
            err.print(f"[bold]series {series}: run {run}/{cycles}[/bold]", highlight=False)
        metrics = run_local(cfg, run_out, ablations=ablations, verbose=verbose, series=series, oracle=oracle)
        _summary(metrics)
        if cycles > 1:
            typer.echo(f"cycle {metrics['cycle']} {metrics['promotion']['reason']}")
        typer.echo(f"report: {store.join(run_out, 'report.html')}")
    if cycles > 1:
        typer.echo(f"every cycle: sicog series report {series}")


@app.command()
@user_errors
def evidence(
    out: OutOpt,
    seeds: Annotated[int, typer.Option(help="Number of world seeds (0..N-1 added to world.seed).")] = 3,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    oracle: Annotated[
        bool, typer.Option(help="Also train the oracle (the pool with its true labels, same steps): the ceiling; needs the world's truth.")
    ] = True,
):
    """Repeat the cycle over seeds, with the uncurated ablation (and the oracle); write a table of means and spreads."""
    from sicog.pipelines.run import run_local
    from sicog.report.evidence import write_evidence

    out = store.local_path(out)  # the evidence table is written here, locally
    base = _config(config, set_)
    per_seed = []
    for i in range(seeds):
        cfg = base.model_copy(deep=True)
        cfg.world.seed = base.world.seed + i
        cfg.seed = base.seed + i
        err.print(f"[bold]evidence: seed {cfg.world.seed} ({i + 1}/{seeds})[/bold]")
        started = time.perf_counter()
        per_seed.append(run_local(cfg, out / f"seed-{cfg.world.seed}", ablations=True, oracle=oracle))
        err.print(f"evidence: seed {cfg.world.seed} took {(time.perf_counter() - started) / 60:.1f} min", highlight=False)
    command = "sicog " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    typer.echo(Path(write_evidence(out, per_seed, command)).read_text())


@app.command()
@user_errors
def figures(
    block: Annotated[str, typer.Option(help="Name of the README block: <!-- figures:NAME --> ... <!-- /figures:NAME -->.")],
    metrics: Annotated[Optional[Path], typer.Option(help="A cycle's metrics.json: its held-out and curation tables.")] = None,
    evidence: Annotated[Optional[Path], typer.Option(help="A `sicog evidence` output folder: its evidence.md.")] = None,
    readme: Annotated[Path, typer.Option(help="The Markdown file that holds the block.")] = Path("README.md"),
    check: Annotated[bool, typer.Option("--check", help="Change nothing; exit 1 if the block differs.")] = False,
):
    """Write measured figures into the README (what `make figures` and `make evidence` run)."""
    from sicog.report.figures import figure_tables, read_block, replace_block

    if (metrics is None) == (evidence is None):
        raise UserError("give exactly one of --metrics FILE and --evidence DIR")
    source = metrics or evidence / "evidence.md"
    body = figure_tables(json.loads(source.read_text())) if metrics else source.read_text()
    text = readme.read_text()
    if check:
        if read_block(text, block) != body:
            err.print(f"{readme}: the '{block}' figures differ from {source}; run `make figures`", highlight=False)
            raise typer.Exit(1)
        return
    readme.write_text(replace_block(text, block, body))
    typer.echo(f"{readme}: '{block}' figures written from {source}")


@serve_app.command("scorer")
@user_errors
def serve_scorer(
    port: Annotated[int, typer.Option(help="gRPC port; 0 asks the OS for a free one (printed).")] = 50051,
    model: Annotated[str, typer.Option(help="sentence-transformers name or path; clients check it against their curate.embedder.")] = "all-MiniLM-L6-v2",
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port; 0: a free one (printed); -1: none.")] = 8000,
    batch_size: Annotated[int, typer.Option(help="Texts per model forward pass (micro-batches are split into these).")] = 64,
    threads: Annotated[int, typer.Option(help="RPC worker threads (one per concurrent call).")] = 16,
    grace_s: Annotated[float, typer.Option(help="On SIGTERM, seconds in-flight calls may take to finish.")] = 30.0,
    max_message_mb: Annotated[int, typer.Option(help="Largest request or response message, MiB.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(help="How long the batcher waits for more requests to batch together.")] = 3.0,
    torch_threads: Annotated[int, typer.Option(help="CPU threads of the model; 0: torch's default (one per core).")] = 0,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run the model repository's own code (NV-Embed-v2 needs it).")] = False,
):
    """The self-consistency scorer as a gRPC service (health, reflection, metrics; drains on SIGTERM)."""
    from sicog.scorer.server import ServerOptions, run

    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}: choose cpu or cuda")
    options = ServerOptions(
        host=host,
        port=port,
        metrics_port=None if metrics_port < 0 else metrics_port,
        threads=threads,
        grace_s=grace_s,
        max_message_bytes=max_message_mb * 2**20,
        max_wait_s=max_wait_ms / 1000,
    )
    run(options, model, device, batch_size, torch_threads, trust_remote_code)


NamespaceOpt = Annotated[
    str, typer.Option("--namespace", "-n", help="Namespace of the servers; empty: cluster.namespace's rule (the pod's own, else default).")
]


@serve_app.command("sweep")
@user_errors
def serve_sweep(namespace: NamespaceOpt = ""):
    """Delete sampler servers whose run has ended (its Workflow is gone or finished) or whose TTL has passed."""
    from sicog.cluster.serving import ServerError, sweep_servers

    try:
        names = sweep_servers(namespace)
    except ServerError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    if not names:
        typer.echo("no servers to sweep")


@serve_app.command("teardown")
@user_errors
def serve_teardown(run_id: Annotated[str, typer.Argument(help="The run whose sampler servers to delete (its KFP run id).")], namespace: NamespaceOpt = ""):
    """Delete every sampler server of a run (what the pipeline's exit handler does)."""
    from sicog.cluster.serving import ServerError, delete_servers

    try:
        names = delete_servers(run_id, namespace)
    except ServerError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    if not names:
        typer.echo(f"no servers of run {run_id}")


@store_app.command("get")
@user_errors
def store_get(
    uri: Annotated[str, typer.Argument(help="Published folder: s3://bucket/key (or a local path).")],
    dest: Annotated[Path, typer.Argument(help="Local folder to fill.")],
):
    """Download a published folder, every file checked against its manifest (e.g. a model for TGI)."""
    from sicog import store

    if store.is_remote(uri):
        store.download_dir(uri, dest)
    else:
        shutil.copytree(store.local_path(uri), dest, dirs_exist_ok=True)
    typer.echo(dest)


@store_app.command("put")
@user_errors
def store_put(
    src: Annotated[Path, typer.Argument(help="Local folder.")], uri: Annotated[str, typer.Argument(help="Destination: s3://bucket/key (or a local path).")]
):
    """Publish a local folder (files first, manifest last), e.g. an assembled base model."""
    from sicog import store

    if not src.is_dir():
        raise FileNotFoundError(str(src))
    if store.is_remote(uri):
        store.upload_dir(src, uri)
    else:
        shutil.copytree(src, store.local_path(uri), dirs_exist_ok=True)
    typer.echo(uri)


@pipeline_app.command("compile")
@user_errors
def pipeline_compile(
    out: OutOpt,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: Annotated[str, typer.Option(help="Default pipeline root: the store folder (s3://...) runs keep their outputs in.")] = "",
):
    """Write the KFP IR YAML that Kubeflow runs (config as the default parameter)."""
    from sicog.pipelines.run import compile_pipeline

    typer.echo(compile_pipeline(out, _config(config, set_), root=root))


HostOpt = Annotated[Optional[str], typer.Option(help="Kubeflow Pipelines API, e.g. http://localhost:8080 (default: $KF_PIPELINES_ENDPOINT, else in-cluster).")]
NamespaceOpt = Annotated[Optional[str], typer.Option(help="Kubeflow profile namespace (multi-user installs).")]
ExperimentOpt = Annotated[str, typer.Option(help="KFP experiment the runs are grouped under.")]


@pipeline_app.command("submit")
@user_errors
def pipeline_submit(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: HostOpt = None,
    series: SeriesOpt = "",
    run_uri: Annotated[str, typer.Option(help="The run's store folder (s3://...), its pipeline root; default: a new folder of --series.")] = "",
    scorer: ScorerOpt = None,
    ablations: Annotated[bool, typer.Option(help="Also train the uncurated ablation.")] = False,
    experiment: ExperimentOpt = "sicog",
    run_name: Annotated[Optional[str], typer.Option(help="Display name of the run.")] = None,
    namespace: NamespaceOpt = None,
):
    """Start one cycle on Kubeflow Pipelines (compiled for the config's `cluster` section)."""
    from sicog.pipelines.run import submit

    run_id = submit(
        _config(config, set_),
        host=host,
        series=series,
        run_uri=run_uri,
        scorer=scorer or "",
        ablations=ablations,
        experiment=experiment,
        run_name=run_name,
        namespace=namespace,
    )
    typer.echo(f"run {run_id}")


@pipeline_app.command("schedule")
@user_errors
def pipeline_schedule(
    cron: Annotated[str, typer.Option(help="Six-field cron, seconds first (KFP): '0 0 3 * * 1' = Mondays 03:00.")],
    series: Annotated[str, typer.Option(help="Store folder of the series (s3://...): each run starts from its last successful cycle.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: HostOpt = None,
    name: Annotated[str, typer.Option(help="Name of the recurring run.")] = "sicog-weekly-cycle",
    scorer: ScorerOpt = None,
    ablations: Annotated[bool, typer.Option(help="Also train the uncurated ablation.")] = False,
    experiment: ExperimentOpt = "sicog",
    namespace: NamespaceOpt = None,
):
    """Run a cycle on a schedule; every run continues the series from its last successful cycle."""
    from sicog.pipelines.run import schedule

    recurring_id = schedule(
        _config(config, set_),
        host=host,
        cron=cron,
        series=series,
        name=name,
        scorer=scorer or "",
        ablations=ablations,
        experiment=experiment,
        namespace=namespace,
    )
    typer.echo(f"recurring run {recurring_id}")


StageOpt = Annotated[str, typer.Option(help="align | pretrain | instruct | warmup")]
JobNameOpt = Annotated[str, typer.Option(help="The stage's run name (lineage, logs; the job is named from it).")]
JobModelOpt = Annotated[str, typer.Option("--model", help="Model folder in the store (s3://...).")]
JobWorldOpt = Annotated[str, typer.Option("--world", help="World folder in the store (s3://...).")]
JobOutOpt = Annotated[
    str, typer.Option("--out", "-o", help="Where the job writes the trained model (s3://...); its pods read the request at OUT.request.json.")
]
JobCuratedOpt = Annotated[Optional[str], typer.Option(help="Curated folder in the store (data curated/uncurated).")]


def _job_args(cfg: SicogConfig, stage: str, data: str, name: str, model: str, world: str, out: str, curated: Optional[str]):
    """The stage's TrainRequest, checked: names known, every URI one the job's pods can reach (s3://)."""
    from sicog.train.backends import check_cluster_uris
    from sicog.train.request import TrainRequest

    request = TrainRequest.of(cfg, stage=stage, data=data, name=name, model=model, world=world, out=out, curated=curated or None)
    check_cluster_uris(request)
    return request


JobKindOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--pytorchjob/--trainjob",
        help="A kubeflow.org/v1 PyTorchJob (Training Operator v1) or a Kubeflow Trainer v2 TrainJob; default: PyTorchJob only with cluster.trainer pytorchjob.",
    ),
]


def _pytorchjob(kind: Optional[bool], cfg: SicogConfig) -> bool:
    return kind if kind is not None else cfg.cluster.trainer == "pytorchjob"


@job_app.command("render")
@user_errors
def job_render(
    stage: StageOpt,
    data: TrainDataOpt,
    name: JobNameOpt,
    model: JobModelOpt,
    world: JobWorldOpt,
    out: JobOutOpt,
    curated: JobCuratedOpt = None,
    kind: JobKindOpt = None,
    write_request: Annotated[
        bool,
        typer.Option("--write-request", help="Also write the request where the pods read it (OUT.request.json), so the printed job can be applied as it is."),
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Print the stage's TrainJob (or PyTorchJob) as YAML for review or GitOps; its pods run
    `torchrun -m sicog.train OUT.request.json` and write the model once, at OUT."""
    import yaml

    from sicog.cluster.pytorchjob import build_pytorchjob, manifest
    from sicog.cluster.trainjob import build_trainjob
    from sicog.train.backends import request_uri

    cfg = _config(config, set_)
    request = _job_args(cfg, stage, data, name, model, world, out, curated)
    args = {"stage": request.stage, "name": request.name, "out": request.out, "request_uri": request_uri(request.out)}
    if write_request:
        request.model_copy(update={"resume": True}).save(args["request_uri"])
    job = manifest(build_pytorchjob(cfg, **args)) if _pytorchjob(kind, cfg) else build_trainjob(cfg, **args)
    typer.echo(yaml.safe_dump(job, sort_keys=False), nl=False)


@job_app.command("run")
@user_errors
def job_run(
    stage: StageOpt,
    data: TrainDataOpt,
    name: JobNameOpt,
    model: JobModelOpt,
    world: JobWorldOpt,
    out: JobOutOpt,
    curated: JobCuratedOpt = None,
    kind: JobKindOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Write the request to OUT.request.json, create the stage's TrainJob (or PyTorchJob) and wait for it (Ctrl-C / SIGTERM delete it)."""
    from sicog.cluster.launcher import JobError
    from sicog.train.backends import pytorchjob, trainjob

    cfg = _config(config, set_)
    request = _job_args(cfg, stage, data, name, model, world, out, curated)
    try:
        (pytorchjob if _pytorchjob(kind, cfg) else trainjob)(request)
    except JobError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    typer.echo(out)


data_app = typer.Typer(no_args_is_help=True, help="Your own datasets: a catalog of sources per SICOG role (see sicog.data).")
app.add_typer(data_app, name="data")


@data_app.command("check")
@user_errors
def data_check(
    catalog: Annotated[str, typer.Argument(help="Catalog file (YAML or JSON; local path or s3:// URI).")],
    role: Annotated[Optional[list[str]], typer.Option("--role", help="Check only this role (repeatable).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
):
    """Read every record and image of a catalog as training would: counts, quarantine reasons, image stats."""
    from sicog.data import check_catalog, load_catalog, render_report

    report = check_catalog(load_catalog(catalog), roles=role)
    if json_:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        Console(width=max(Console().width, 140)).print(render_report(report))


series_app = typer.Typer(no_args_is_help=True, help="A series of recurring cycles (sicog.lineage), read from its cycles' lineage.json.")
app.add_typer(series_app, name="series")


@series_app.command("report")
@user_errors
def series_report(
    series: Annotated[str, typer.Argument(help="Series folder: local path or s3://bucket/prefix (the --series of the runs).")],
    out: Annotated[
        Optional[str], typer.Option("--out", "-o", help="Folder for series.md, series.csv and series.png (local or s3://); default: SERIES/report.")
    ] = None,
):
    """Every cycle of a series in one table and one plot: held-out scores, curated and quarantined counts,
    keep rates, step budgets and the promotion decision."""
    from sicog.report.series import rich_table, write_series_report

    rows, paths = write_series_report(series, out or store.join(series, "report"))
    Console().print(rich_table(rows, f"series {series}"))
    for name, uri in paths.items():
        typer.echo(f"{name}: {uri}")


def main() -> None:
    logs.configure()  # JSON lines on stderr in the images (SICOG_LOG_FORMAT=json), else plain
    app()


if __name__ == "__main__":
    main()
