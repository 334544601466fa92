"""The SICOG steps as library functions: config + URIs in, files under an output URI out.

Each function here is what one KFP component calls (components/ only translates artifacts to URIs)
and what one CLI subcommand calls, so a user can run any single step on their own data. Every step
writes `step.json` (its own figures) and `timings.json` (its own seconds plus those of the steps it
consumed), so the last step of a cycle knows the whole cycle's timings without a second orchestrator.

References: arXiv 2503.12303, Sec. 3 (steps 1-4) and Table 13 (training stages).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import random
import resource
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from sicog import store
from sicog.config import SicogConfig, validate_config
from sicog.errors import UserError
from sicog.records import IMAGE_TOKEN, ScoredRow, read_jsonl, validate_records, write_json, write_jsonl
from sicog.store import local_path

# Which records each training data name means: catalog roles (sicog.data), never `meta` fields.
TRAIN_DATA = {
    "align": "the catalog's align role (stage 1 pairs images with captions)",
    "base": "the catalog's instruct role (stage 2 instruction data)",
    "perception": "the catalog's perception role: DD + CoD captions (step-1 warm-up)",
    "reasoning": "the catalog's reasoning role: DA + CoT answers (step-1 warm-up)",
    "curated": "curated self-generated data + the roles of train.pretrain_mix (stage 1.5)",
    "labeled": "instruct + perception + reasoning roles (the compute-matched control's stage 1.5)",
    "uncurated": "one random candidate per instance + the roles of train.pretrain_mix (ablation's stage 1.5)",
}


def as_config(config: SicogConfig | dict) -> SicogConfig:
    return config if isinstance(config, SicogConfig) else validate_config(config)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


@contextmanager
def _step(name: str, out: Path, inputs: list[Path | None]):
    """Time a step; write step.json and the merged timings.json ({step: {seconds, peak_rss_mb, quarantined, failures}})."""
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {}
    start = time.perf_counter()
    yield figures
    seconds, rss = round(time.perf_counter() - start, 3), round(_peak_rss_mb(), 1)
    timings: dict = {}
    for inp in inputs:
        if inp is not None:
            timings.update(_read_json(inp / "timings.json", {}))
    timings[name] = {"seconds": seconds, "peak_rss_mb": rss, "quarantined": figures.get("quarantined", 0), "failures": figures.get("failures", 0)}
    write_json(out / "step.json", {"step": name, "seconds": seconds, "peak_rss_mb": rss, **figures})
    write_json(out / "timings.json", timings)


# The parameters of the steps below that name inputs (a URI, or a list or dict of URIs); `out` is the output.
STEP_INPUTS = ("world", "model", "curated", "pairs", "candidates", "scored", "models", "curation", "evaluation", "warmups")


@contextmanager
def rank_output(uri: str):
    """store.local_output, also for a step run as one of torchrun's ranks (RANK is set): only global
    rank 0 seals or publishes `uri`; the other ranks write into the same folder and leave it alone.

    For an s3:// output, every rank of a node (a PyTorchJob pod) stages in one folder named from the
    URI, as they share `out` on a local run; rank 0 (on the master node) publishes it on success and
    removes it. A folder left by a failed attempt stays, so a restarted container in the same pod
    (its /tmp is an emptyDir) resumes from the checkpoints in it."""
    rank = os.environ.get("RANK")
    if rank is None or (rank == "0" and not store.is_remote(uri)):
        with store.local_output(uri) as path:
            yield path
        return
    if not store.is_remote(uri):
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    store.check_access(uri)
    staging = Path(tempfile.gettempdir()) / f"sicog-stage-{hashlib.sha256(str(uri).encode()).hexdigest()[:16]}"
    staging.mkdir(parents=True, exist_ok=True)
    yield staging
    if rank == "0":
        store.upload_dir(staging, uri)
        shutil.rmtree(staging, ignore_errors=True)


def through_store(step):
    """Let a step take any store URI (local, file://, s3://) while its body works on local paths:
    `out` becomes store.local_output (written in place locally, else staged and published with its
    manifest on success; entered first, so wrong credentials fail before any work; under torchrun
    only rank 0 publishes, see rank_output), and every input becomes store.local_input (the path
    itself locally, else a verified download)."""
    signature = inspect.signature(step)

    @functools.wraps(step)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        with ExitStack() as stack:
            fetch = lambda uri: str(stack.enter_context(store.local_input(uri))) if uri else uri  # noqa: E731
            if "out" in bound.arguments:
                bound.arguments["out"] = str(stack.enter_context(rank_output(bound.arguments["out"])))
            for name in STEP_INPUTS:
                value = bound.arguments.get(name)
                if isinstance(value, dict):
                    bound.arguments[name] = {key: fetch(uri) for key, uri in value.items()}
                elif isinstance(value, (list, tuple)):
                    bound.arguments[name] = [fetch(uri) for uri in value]
                elif value is not None:
                    bound.arguments[name] = fetch(value)
            return step(*bound.args, **bound.kwargs)

    return run


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())


# --- the demo world and the tiny model ------------------------------------------------------------


@through_store
def make_world(config: SicogConfig | dict, out: str, images: str = ".") -> dict:
    """The cycle's data: `out/catalog.yaml`, which every later step reads its roles from.

    With `data.catalog` (the user's datasets), that catalog validated, every role opened and
    counted, and written with absolute URIs; nothing is copied. Without, the procedural world
    (images, splits, ground truth) and a catalog of its own files (`images`: where its images are
    read from; the world's store URI when the run publishes it there)."""
    from sicog.data import dump_catalog, load_catalog, open_role
    from sicog.world import build_world, world_catalog

    cfg = as_config(config)
    out_dir = local_path(out)
    with _step("world", out_dir, []) as figures, _progress() as progress:
        if cfg.data.catalog:
            catalog = load_catalog(cfg.data.catalog)
            (out_dir / "catalog.yaml").write_text(dump_catalog(catalog), encoding="utf-8")
            manifest = {"catalog": cfg.data.catalog, "counts": {role: len(open_role(catalog, role)) for role in catalog.roles()}}
            write_json(out_dir / "manifest.json", manifest)
        else:
            manifest = build_world(out_dir, cfg.world, progress=progress)
            world_catalog(out_dir, images=images)
        figures["counts"] = manifest.get("counts", {})
    return manifest


def _catalog(data_dir: Path):
    """The run's data catalog: the world step's `catalog.yaml` (relative paths resolve against it),
    or, in a folder without one, its `<role>.jsonl` files (sicog.data.catalog.folder_catalog)."""
    from sicog.data.catalog import folder_catalog, load_catalog

    return load_catalog(data_dir / "catalog.yaml") if (data_dir / "catalog.yaml").is_file() else folder_catalog(data_dir)


def _role(catalog, role: str, quarantine: list[dict]) -> list[dict]:
    """Every record of a catalog role (images as absolute URIs); its bad rows go to `quarantine`."""
    from sicog.data import read_role

    records, bad = read_role(catalog, role)
    quarantine.extend(bad)
    return records


def _catalog_texts(catalog) -> Iterator[str]:
    """The texts of a user catalog's labeled roles and text pool, for a fresh model's tokenizer."""
    for role in ("align", "instruct", "perception", "reasoning", "pool_vqa", "pool_text"):
        for rec in _role(catalog, role, []):
            yield from (turn["value"].replace(IMAGE_TOKEN, "").strip() for turn in rec.get("conversations", []))


@through_store
def init_model(config: SicogConfig | dict, world: str, out: str) -> str:
    """The cycle's starting model: a copy of `model.start` (a trained model in the store: the last
    cycle's, or an assembled base model), else a fresh tiny LLaVA whose tokenizer is trained on the
    world's text."""
    from sicog.models import init_model as build
    from sicog.world import world_texts

    cfg = as_config(config)
    world_dir, out_dir = local_path(world), local_path(out)
    with _step("model-init", out_dir, [world_dir]):
        if cfg.model.start and store.is_remote(cfg.model.start):
            store.download_dir(cfg.model.start, out_dir)  # straight into place: a 7B model is not staged twice
            (out_dir / store.MANIFEST).unlink()  # this step's output gets its own; its timings start here (_step)
        elif cfg.model.start:
            shutil.copytree(store.local_path(cfg.model.start), out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(store.MANIFEST))
        else:
            texts = world_texts(world_dir) if (world_dir / "base.jsonl").is_file() else _catalog_texts(_catalog(world_dir))
            build(out_dir, texts, cfg.model, image_size=cfg.world.image_size, seed=cfg.seed)
            write_json(out_dir / "lineage.json", [])
    return str(out_dir)


# --- step 1 and step 4: training ------------------------------------------------------------------


ROLES_OF = {"align": ("align",), "base": ("instruct",), "perception": ("perception",), "reasoning": ("reasoning",),
            "labeled": ("instruct", "perception", "reasoning")}


def training_records(cfg: SicogConfig, data: str, world_dir: Path, curated_dir: Path | None) -> tuple[list[dict], list[dict]]:
    """(records, quarantine rows) for a training data name of TRAIN_DATA, read through the catalog
    in `world_dir` (the world step's output)."""
    quarantine: list[dict] = []
    catalog = _catalog(world_dir)
    if data in ROLES_OF:
        records = [rec for role in ROLES_OF[data] for rec in _role(catalog, role, quarantine)]
    elif data in ("curated", "uncurated"):
        if curated_dir is None:
            raise ValueError(f"training data {data!r} needs the curated dataset")
        records = list(read_jsonl(curated_dir / f"{data}.jsonl"))
        if data == "curated":  # a series' earlier cycles' curated data (train.carry_curated)
            for uri in cfg.train.earlier_curated:
                records += [json.loads(line) for line in store.read_text(store.join(uri, "curated.jsonl")).splitlines() if line.strip()]
        for role in cfg.train.pretrain_mix:
            records += _role(catalog, role, quarantine)
    else:
        raise UserError(f"unknown training data {data!r}; choose from {', '.join(TRAIN_DATA)}")
    return records, quarantine


@through_store
def train(config: SicogConfig | dict, stage: str, data: str, model: str, world: str, out: str, name: str,
          curated: str | None = None, pairs: str | None = None, resume: bool = False) -> dict:
    """Train one stage (warmup | align | pretrain | instruct | dpo) of `model` on `data`; save to `out`.

    This is the body of every training process: `sicog train` runs it, alone or as one of
    torchrun's ranks (rank 0 writes the step's files). `dpo` trains on `pairs` (from dpo_pairs);
    `data` then only names the task in the lineage. `resume`: continue from out's last checkpoint.
    """
    from sicog.train.trainer import is_main_process, train_stage

    cfg = as_config(config)
    stage_cfg = getattr(cfg.train, stage)
    model_dir, world_dir, out_dir = local_path(model), local_path(world), local_path(out)
    curated_dir = local_path(curated) if curated else None
    if stage == "dpo":
        from sicog.train.dpo import train_dpo as run_stage

        if not pairs:
            raise ValueError("stage dpo needs preference pairs (sicog dpo-pairs)")
        records, quarantine, inputs = list(read_jsonl(local_path(pairs) / "pairs.jsonl")), [], [model_dir, local_path(pairs)]
    else:
        run_stage = train_stage
        records, quarantine = training_records(cfg, data, world_dir, curated_dir)
        inputs = [model_dir, curated_dir]
    main = is_main_process()
    with (_step(f"train:{name}", out_dir, inputs) if main else nullcontext({})) as figures, (_progress() if main else nullcontext()) as progress:
        log = run_stage(model_dir, records, world_dir, out_dir, stage_cfg, cfg.train, cfg.seed, name, progress=progress, resume=resume)
        if main:
            if quarantine:
                write_jsonl(out_dir / "quarantine.jsonl", quarantine)
            lineage = _read_json(model_dir / "lineage.json", [])
            lineage.append({"name": name, "stage": stage, "data": data, **{k: log[k] for k in ("steps", "loss_history", "train_seconds", "records", "skipped") if k in log}})
            write_json(out_dir / "lineage.json", lineage)
            figures.update({"records": len(records), "quarantined": len(quarantine), "steps": log.get("steps"), "tokens_per_second": log.get("tokens_per_second")})
    return log


@through_store
def train_torchrun(config: SicogConfig | dict, stage: str, data: str, model: str, world: str, out: str, name: str,
                   curated: str | None = None, pairs: str | None = None) -> dict:
    """`train` through `torchrun --nproc_per_node train.nproc` on this machine (what the pipeline's
    local train component runs); a rerun into the same `out` resumes from its last checkpoint.
    With `train.step1: dpo`, the warm-up stage is the DPO variant (pairs first, then stage dpo)."""
    from sicog.train.launch import torchrun_train

    cfg = as_config(config)
    if stage == "warmup" and cfg.train.step1 == "dpo":
        # The paper's DPO variant of step 1: pairs (chosen = the annotation, rejected = this model's
        # answer on a corrupted image) are made once, kept beside the model as provenance, then every
        # rank trains DPO + SFT on them.
        pairs = str(Path(out) / "dpo-pairs")
        dpo_pairs(cfg, data, model, world, pairs)
        stage = "dpo"
    return torchrun_train(cfg, stage=stage, data=data, model=model, world=world, out=out, name=name, curated=curated, pairs=pairs)


def train_pytorchjob(config: SicogConfig | dict, stage: str, data: str, model_uri: str, world_uri: str, out: str, name: str,
                     curated_uri: str | None = None, work_uri: str = "") -> dict:
    """`train` as a Kubeflow PyTorchJob (cluster.trainer: pytorchjob) of cluster.nodes x train.nproc ranks.

    The job's pods see only the store: the inputs must be s3:// URIs, the config goes to
    work_uri/jobs/<name>/config.yaml and the job publishes the model at work_uri/steps/train/<name>
    (where store.published_artifact keeps a local train task's output). Then the model is downloaded
    into `out` (the task's artifact folder); returns the stage's train log, as train_torchrun does.
    """
    from sicog.cluster.launcher import run_stage

    cfg = as_config(config)
    if not store.is_remote(work_uri):
        raise ValueError(f"cluster.trainer pytorchjob needs the run's work_uri in object storage (s3://), not {work_uri or 'none'}: "
                         "the job's pods cannot see the pipeline pod's files")
    for label, uri in (("model", model_uri), ("world", world_uri), ("curated", curated_uri)):
        if uri is not None and not store.is_remote(uri):
            raise ValueError(f"cluster.trainer pytorchjob: the {label} input is not in object storage ({uri or 'no store URI'}): the job's pods cannot read it")
    config_uri, job_out = store.join(work_uri, "jobs", name, "config.yaml"), store.join(work_uri, "steps", "train", name)
    run_stage(cfg, config_uri=config_uri, stage=stage, data=data, name=name, model=model_uri, world=world_uri, out=job_out, curated=curated_uri)
    store.download_dir(job_out, out)
    return json.loads((Path(out) / "train_log.json").read_text())


# The base model's stages (stage 1, then stage 2 on the instruction data), skipped from a foundation model.
FOUNDATION_STAGES = ("stage1/align", "base/instruct")


def train_task(config: SicogConfig | dict, stage: str, data: str, name: str, model: str, world: str, out: str,
               curated: str | None = None, work_uri: str = "", uris: dict[str, str] | None = None) -> tuple[dict, str]:
    """The pipeline's train task: a PyTorchJob with cluster.trainer pytorchjob (reading the inputs at
    their store URIs, `uris`: {"model", "world", "curated"}), else torchrun in the task's own pod, its
    output kept at work_uri/steps/train/<name> when work_uri is in object storage.
    Returns (train log, store URI of the trained model).
    From a foundation model (model.foundation: a series' previous cycle, paper App. G) the base model's
    own stages (FOUNDATION_STAGES) are not re-run: the model passes through as it is, 0 steps."""
    cfg = as_config(config)
    if cfg.model.foundation and name in FOUNDATION_STAGES:
        log = {"stage": stage, "name": name, "steps": 0, "loss_history": [], "skipped": "the foundation model is already aligned and instruction-tuned"}
        if cfg.cluster.trainer == "pytorchjob" and (uris or {}).get("model"):
            # Later tasks read the artifact; later PyTorchJobs the store, where the model already is.
            shutil.copytree(local_path(model), local_path(out), dirs_exist_ok=True)
            return log, uris["model"]
        with store.published_artifact(out, work_uri, f"train/{name}") as published:
            shutil.copytree(local_path(model), local_path(out), dirs_exist_ok=True)
        return log, published or out
    if cfg.cluster.trainer == "pytorchjob":
        uris = uris or {}
        log = train_pytorchjob(cfg, stage, data, uris.get("model", ""), uris.get("world", ""), out, name,
                               uris.get("curated", "") if curated else None, work_uri)
        return log, store.join(work_uri, "steps", "train", name)
    with store.published_artifact(out, work_uri, f"train/{name}") as published:
        log = train_torchrun(cfg, stage, data, model, world, out, name, curated)
    return log, published or out


@through_store
def dpo_pairs(config: SicogConfig | dict, data: str, model: str, world: str, out: str) -> dict:
    """Preference pairs for the DPO variant of step 1: chosen = the annotated answer, rejected = `model`'s
    answer on a corrupted copy of the image; writes out/pairs.jsonl and out/images/."""
    from sicog.annotate.dpo import make_pairs

    cfg = as_config(config)
    model_dir, world_dir, out_dir = local_path(model), local_path(world), local_path(out)
    records, quarantine = training_records(cfg, data, world_dir, None)
    with _step(f"dpo-pairs:{data}", out_dir, [model_dir]) as figures, _progress() as progress:
        stats = make_pairs(records, model_dir, world_dir, out_dir, cfg.seed, cfg.sample.max_new_tokens, cfg.sample.batch_size, progress=progress)
        if quarantine:
            write_jsonl(out_dir / "quarantine.jsonl", quarantine)
        figures.update(stats, quarantined=len(quarantine))
    return stats


# --- step 2: candidate generation -----------------------------------------------------------------

POOLS = {"caption": "pool_images", "vqa": "pool_vqa", "text": "pool_text"}


@through_store
def extract_backbone(config: SicogConfig | dict, model: str, out: str) -> dict:
    """The backbone LLM that answers text-only prompts (paper App. A): the language model of the
    LLaVA at `model` (language_model + lm_head) saved as a causal-LM folder with its tokenizer.
    With `sample.backbone` set (a separate LLM), or a served engine at `sample.endpoint` (that server
    answers the text task), nothing is extracted: `out/backbone.json` only says which model the text
    task uses. (A served engine the pipeline deploys serves the extracted folder.)"""
    from sicog.generate.backbone import BACKBONE_FILE, extract_backbone as extract

    cfg = as_config(config)
    model_dir, out_dir = local_path(model), local_path(out)
    with _step("extract-backbone", out_dir, [model_dir]) as figures:
        if cfg.sample.backbone or (cfg.sample.engine != "local" and cfg.sample.endpoint):
            source = cfg.sample.backbone or f"{cfg.sample.endpoint}#{cfg.sample.served_model}"
            write_json(out_dir / BACKBONE_FILE, {"model": source, "extracted_from": None})
            figures["backbone"] = source
        else:
            extract(model_dir, out_dir, trust_remote_code=cfg.model.trust_remote_code)
            figures["backbone"] = _read_json(out_dir / BACKBONE_FILE, {}).get("model")
    return figures


@contextmanager
def _text_sampler_model(cfg: SicogConfig, model_dir: Path | None):
    """(model folder, model name) that answers text-only prompts with the local backend: the
    configured backbone LLM (`sample.backbone`, any store URI), else `model_dir` when it already is
    a causal LM (the extract-backbone step's output), else the backbone extracted from the LLaVA at
    `model_dir` into a temporary folder."""
    from sicog.generate.backbone import extract_backbone as extract, is_multimodal

    if cfg.sample.backbone:
        with store.local_input(cfg.sample.backbone) as path:
            yield path, cfg.sample.backbone
        return
    if model_dir is None:
        raise ValueError("the text task needs --model (a LLaVA or its backbone LLM) or sample.backbone")
    if not is_multimodal(model_dir):
        yield model_dir, None
        return
    with tempfile.TemporaryDirectory(prefix="sicog-backbone-") as tmp:
        yield extract(model_dir, Path(tmp) / "backbone", trust_remote_code=cfg.model.trust_remote_code), None


@through_store
def sample(config: SicogConfig | dict, task: str, model: str | None, world: str, out: str, shard: int | None = None, work: str | None = None,
           server: dict | None = None) -> dict:
    """Sample candidates for the task's unlabeled pool (perception model for captions, reasoning
    model for VQA, the backbone LLM for text-only: see _text_sampler_model), or from
    `sample.endpoint` (a served engine; `model` is then only read for its image size), resuming finished chunks.

    shard None: every shard of `sample.shards` in turn, then collected into `out/candidates.jsonl`.
    shard i: only that shard (the pipeline's fan-out); its chunks go to `sampling/<task>/shard-<i>` under
    `work` (any store URI; default `out`) and `out/shard.json` says where; `collect_samples` gathers them.
    `server`: the run's own server of this model (sicog.cluster.serving.launch_server), in place of
    `sample.endpoint` and `sample.served_model`; its `image_edge` sizes the images unless configured.
    """
    from sicog.generate.sample import sample_candidates, sample_shard
    from sicog.generate.shards import shard_dir

    cfg = as_config(config)
    if server:
        cfg.sample.endpoint, cfg.sample.served_model = server["endpoint"], server["served_model"]
        if cfg.sample.image_edge == -1:
            cfg.sample.image_edge = int(server.get("image_edge", 0))
    model_dir, world_dir, out_dir = local_path(model) if model else None, local_path(world), local_path(out)
    quarantine: list[dict] = []
    records = _role(_catalog(world_dir), POOLS[task], quarantine)
    shard = None if shard is None else int(shard)  # KFP hands loop items over as numbers, maybe 0.0
    name = f"sample:{task}" if shard is None else f"sample:{task}:shard-{shard:05d}"
    with _step(name, out_dir, [model_dir]) as figures, _progress() as progress, ExitStack() as stack:
        sampler_dir, model_name = model_dir, None
        if task == "text" and cfg.sample.engine == "local":
            sampler_dir, model_name = stack.enter_context(_text_sampler_model(cfg, model_dir))
        if shard is None:
            stats = sample_candidates(records, task, sampler_dir, out_dir / "candidates.jsonl", cfg.sample, cfg.seed, world_dir,
                                      progress=progress, work_uri=work or str(out_dir / "work"), model_name=model_name)
        else:
            uri = shard_dir(work or str(out_dir), task, shard)
            todo = progress.add_task(f"sampling {task} shard {shard}", total=None)
            stats = sample_shard(records, task, sampler_dir, uri, shard, cfg.sample, cfg.seed, world_dir,
                                 advance=lambda n: progress.advance(todo, n), model_name=model_name)
            write_json(out_dir / "shard.json", {"task": task, "shard": shard, "uri": uri, **stats})
            quarantine = quarantine if shard == 0 else []  # the pool's quarantine is reported once, by shard 0
            if shard == 0:  # also beside the chunks, for collect_stored
                store.write_text(store.join(uri, "quarantine.jsonl"), "".join(json.dumps(r) + "\n" for r in quarantine))
        write_jsonl(out_dir / "quarantine.jsonl", quarantine)
        figures.update(stats, quarantined=len(quarantine))
    return stats


def collect_samples(config: SicogConfig | dict, task: str, shards: list[str], out: str) -> dict:
    """Gather the shards of one task (folders holding shard.json from `sample(shard=i)`) into
    `out/candidates.jsonl` + failures, sorted by (id, index); fails if a shard is missing or unfinished."""
    from sicog.generate.sample import collect_candidates

    cfg = as_config(config)
    dirs, out_dir = [local_path(s) for s in shards], local_path(out)
    pointers = sorted((json.loads((d / "shard.json").read_text()) for d in dirs), key=lambda p: p["shard"])
    if [p["shard"] for p in pointers] != list(range(cfg.sample.shards)) or any(p["task"] != task for p in pointers):
        raise ValueError(f"collect {task}: got shards {[p['shard'] for p in pointers]}, config says sample.shards={cfg.sample.shards}")
    with _step(f"collect:{task}", out_dir, dirs) as figures:
        stats = collect_candidates([p["uri"] for p in pointers], out_dir / "candidates.jsonl")
        quarantine = [row for d in dirs for row in read_jsonl(d / "quarantine.jsonl")]
        write_jsonl(out_dir / "quarantine.jsonl", quarantine)
        figures.update(stats)  # failures and quarantined were counted by the shard steps' own timings
    return stats


def collect_stored(config: SicogConfig | dict, task: str, work: str, out: str) -> dict:
    """Gather every shard of one task from `work`/sampling/<task>/shard-<i> (each must be complete)
    into `out/candidates.jsonl` + failures, with shard 0's quarantine; as collect_samples, without
    the shard tasks' pointers."""
    from sicog.generate.sample import collect_candidates
    from sicog.generate.shards import shard_dir

    cfg = as_config(config)
    out_dir = local_path(out)
    uris = [shard_dir(work, task, i) for i in range(cfg.sample.shards)]
    with _step(f"collect:{task}", out_dir, []) as figures:
        stats = collect_candidates(uris, out_dir / "candidates.jsonl")
        quarantined = store.join(uris[0], "quarantine.jsonl")
        text = store.read_text(quarantined) if store.exists(quarantined) else ""
        (out_dir / "quarantine.jsonl").write_text(text)
        figures.update(stats)
    return stats


# --- step 1 data: teacher annotation and LLaVA-CoT conversion --------------------------------------


@through_store
def annotate_cod(config: SicogConfig | dict, captions: str, out: str, images: str | None = None) -> dict:
    """CoD + DD records from caption records (image + original caption) through the teacher at
    `annotate.endpoint`; writes `out/annotated.jsonl` and `out/quarantine.jsonl`.
    Image paths are relative to `images` (default: the captions file's folder)."""
    from sicog.annotate.cod import annotate_cod as annotate
    from sicog.generate.remote import RemoteSampler

    cfg = as_config(config)
    a = cfg.annotate
    path, out_dir = local_path(captions), local_path(out)
    root = local_path(images) if images else path.parent
    if not a.endpoint:
        raise ValueError("annotate.endpoint is not set (pass --endpoint URL)")
    records, bad = validate_records(path, root)
    quarantine = list(bad)
    quarantine += [{"id": r["id"], "reason": "no image", "raw": json.dumps(r)[:500]} for r in records if not r.get("image")]
    records = [r for r in records if r.get("image")]
    teacher = RemoteSampler(a.endpoint, root, served_model=a.served_model, concurrency=a.concurrency, max_new_tokens=a.max_new_tokens,
                            temperature=a.temperature, timeout_s=a.timeout_s, max_attempts=a.max_attempts)
    with _step("annotate:cod", out_dir, []) as figures, _progress() as progress:
        todo = progress.add_task("annotating (CoD)", total=None)
        annotated, failed = annotate(records, teacher, seed=cfg.seed, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                                     advance=lambda n: progress.advance(todo, n))
        write_jsonl(out_dir / "annotated.jsonl", annotated)
        write_jsonl(out_dir / "quarantine.jsonl", quarantine + failed)
        figures.update(records=len(records) + len(quarantine), annotated=len(annotated) // 2, quarantined=len(quarantine) + len(failed),
                       requests=teacher.attempts)
    return figures


@through_store
def annotate_cot(config: SicogConfig | dict, llava_cot: str, out: str) -> dict:
    """DA + CoT records from LLaVA-CoT tagged records; writes `out/annotated.jsonl` and `out/quarantine.jsonl`."""
    from sicog.annotate.cot import annotate_cot as convert, read_llava_cot

    as_config(config)
    path, out_dir = local_path(llava_cot), local_path(out)
    with _step("annotate:cot", out_dir, []) as figures:
        rows, malformed = read_llava_cot(path)
        annotated, quarantine = convert(rows)
        write_jsonl(out_dir / "annotated.jsonl", annotated)
        write_jsonl(out_dir / "quarantine.jsonl", malformed + quarantine)
        figures.update(records=len(rows) + len(malformed), annotated=len(annotated) // 2, quarantined=len(malformed) + len(quarantine))
    return figures


# --- step 3: self-consistency ---------------------------------------------------------------------

# What `score` writes in its output folder and `curate` reads from each scored folder.
SCORED_FILE, REJECTED_FILE = "scored.jsonl", "rejected.jsonl"


def scored_files(uri: str) -> tuple[str, str]:
    """(scored rows, rejected rows) of a score output at `uri`, the one naming rule that `sicog score
    --out` and `sicog curate --scored` share: a folder holds scored.jsonl and rejected.jsonl; a name
    ending in .jsonl is the scored rows themselves, with <stem>.rejected.jsonl beside it."""
    uri = str(uri).rstrip("/")
    if uri.endswith(".jsonl"):
        return uri, uri[: -len(".jsonl")] + ".rejected.jsonl"
    return store.join(uri, SCORED_FILE), store.join(uri, REJECTED_FILE)


@through_store
def score(config: SicogConfig | dict, candidates: list[str], out: str, scorer: str | None = None) -> dict:
    """Score each instance's candidates by self-consistency and decide `kept` by its task's threshold.

    `candidates`: candidates JSONL files (or folders holding `candidates.jsonl`); tasks may be mixed
    and each is scored with its own section of `curate`, with one embedder for all. Writes
    `out/scored.jsonl` (one row per instance: id, scores in candidate index order, best, kept) and
    `out/rejected.jsonl` (every instance not kept, with its scores and reason): the folder `curate`
    reads. Text-only: its threshold, then its top-K by score.
    `scorer`: HOST:PORT of a scorer service to embed with (None: `curate.scorer`; empty: in-process).
    """
    from sicog.curate.select import score_instances, select_instances

    cfg = as_config(config)
    paths = [local_path(c) for c in candidates]
    paths = [p / "candidates.jsonl" if p.is_dir() else p for p in paths]
    out_dir = local_path(out)
    by_task: dict[str, list[dict]] = {}
    for path in paths:
        for row in read_jsonl(path):
            if row.get("text") is not None:  # sampling failures are already written with their reasons
                by_task.setdefault(row["task"], []).append(row)
    with _step("score", out_dir, [p.parent for p in paths]) as figures:
        scored_all, rejected_all, embedder = [], [], None
        for task, rows in sorted(by_task.items()):
            task_cfg = getattr(cfg.curate, task)
            if embedder is None and task_cfg.similarity != "exact":
                embedder = _scoring_embedder(cfg, cfg.curate.scorer if scorer is None else scorer)
            scored, unscorable = score_instances(rows, task_cfg.similarity, embedder, task_cfg.short_answer_words)
            kept, rejected = select_instances(scored, task, task_cfg.threshold, cfg.curate.text_top_k if task == "text" else None)
            scored_all += scored
            rejected_all += unscorable + rejected
            figures[task] = {"instances": len(scored) + len(unscorable), "kept": len(kept), "similarity": task_cfg.similarity,
                             "threshold": task_cfg.threshold, "malformed": sum(len(r.get("malformed", [])) for r in scored)}
        write_jsonl(out_dir / SCORED_FILE, scored_all)
        write_jsonl(out_dir / REJECTED_FILE, rejected_all)
    return figures


def _scoring_embedder(cfg: SicogConfig, address: str):
    """The in-process Embedder, or a client of the scorer service at `address`.

    The service is used for embeddings only (its Embed RPC), not for its group scores: the client
    has Embedder.encode's contract, so score_instances runs unchanged (hybrid routing, malformed
    candidates, the scores themselves) on the very vectors the in-process path would compute.
    """
    if not address:
        from sicog.curate.embedder import Embedder

        return Embedder(cfg.curate.embedder, batch_size=cfg.curate.embed_batch_size, trust_remote_code=cfg.curate.trust_remote_code)
    from sicog.scorer.client import ScorerClient

    client = ScorerClient(address)
    if client.model_id != cfg.curate.embedder:  # thresholds are only meaningful for the embedder they were set for
        raise ValueError(f"scorer {address} serves {client.model_id!r}, but curate.embedder is {cfg.curate.embedder!r}")
    return client


# --- step 3 (cont.): curated data, uncurated ablation, curation quality ---------------------------


@through_store
def curate(config: SicogConfig | dict, world: str, scored: list[str], out: str) -> dict:
    """Turn kept instances into LLaVA training records and measure curation against ground truth.

    `scored`: folders from `score` (each holds scored.jsonl and rejected.jsonl). Text-only keeps its
    threshold and top-K over all of them together. Writes `curated.jsonl` (stage-1.5 data with
    provenance; high-consistency CoD winners as 5-turn conversations), `uncurated.jsonl` (the
    ablation: one random candidate of as many random instances, same size), `rejected.jsonl` and
    `curation.json`.
    """
    from sicog.curate.select import select_instances, to_curated
    from sicog.evaluate.metrics import curation_quality

    cfg = as_config(config)
    world_dir, out_dir = local_path(world), local_path(out)
    scored_dirs = [local_path(uri) for uri in scored]
    truth = {row["id"]: row for row in _role(_catalog(world_dir), "truth", [])}  # optional: quality figures need it
    with _step("curate", out_dir, scored_dirs) as figures:
        curated, uncurated, rejected, quality, scores = [], [], [], {}, {}
        by_task: dict[str, list[dict]] = {}
        for sdir in scored_dirs:
            for n, row in enumerate(read_jsonl(sdir / SCORED_FILE), start=1):
                try:
                    ScoredRow.from_row(row)
                except ValueError as exc:
                    raise ValueError(f"{sdir / SCORED_FILE} line {n}: {exc}") from None
                by_task.setdefault(row["task"], []).append(row)
            rejected += list(read_jsonl(sdir / REJECTED_FILE))
        rng = random.Random(cfg.seed)
        for task in ("caption", "vqa", "text"):  # every task is reported, also when nothing could be scored
            rows = by_task.get(task, [])
            kept = [r for r in rows if r["kept"]]
            if task == "text":
                # The top-K is over the whole text pool: scored inputs that were selected apart are selected again together.
                kept, demoted = select_instances(kept, task, cfg.curate.text.threshold, cfg.curate.text_top_k)
                rejected += demoted
            task_curated = to_curated(kept, cfg.cycle, cfg.curate.conversation_threshold)
            curated += task_curated
            # Ablation, same size: as many random instances as curated records, one random well-formed candidate each.
            for row in rng.sample(rows, min(len(task_curated), len(rows))):
                ok = [i for i, s in enumerate(row["scores"]) if s is not None]
                pick = dict(row, best=row["candidates"][rng.choice(ok)]["index"], score=None)
                uncurated += to_curated([pick], cfg.cycle, cfg.curate.conversation_threshold)  # score None: no conversation
            quality[task] = curation_quality(rows, truth, task, cfg.curate.sweep)
            quality[task]["similarity"] = getattr(cfg.curate, task).similarity
            quality[task]["threshold"] = getattr(cfg.curate, task).threshold
            quality[task]["malformed"] = sum(len(r.get("malformed", [])) for r in rows)
            # Instances that got candidates at all; `total` counts only those with >= 2 well-formed ones.
            quality[task]["instances"] = len({r["id"] for r in rows} | {r["id"] for r in rejected if r.get("task") == task})
            if task == "caption":
                quality[task]["conversations"] = sum(1 for r in task_curated if r["sicog"]["conversation"])
            scores[task] = {"best": [r["score"] for r in rows], "all": [s for r in rows for s in r["scores"] if s is not None]}
        write_jsonl(out_dir / "curated.jsonl", curated)
        write_jsonl(out_dir / "uncurated.jsonl", uncurated)
        write_jsonl(out_dir / "rejected.jsonl", rejected)
        write_json(out_dir / "curation.json", {"quality": quality, "scores": scores, "rejected": dict(Counter(r["task"] for r in rejected))})
        figures.update(curated=len(curated), uncurated=len(uncurated), rejected=len(rejected))
    return quality


# --- evaluation -----------------------------------------------------------------------------------


@through_store
def evaluate(config: SicogConfig | dict, models: dict[str, str], world: str, out: str) -> dict:
    """Held-out VQA exact match (direct-answer prompt) and caption attribute recall (DD prompt) of
    each named model, plus `eval.benchmarks` through lmms-eval (sicog.evaluate.lmms), merged into
    the same flat per-model dict; writes `out/<name>/predictions.jsonl`, `out/<name>/lmms/` and
    `out/eval.json`. Wall seconds of both parts per model go to the step's timings."""
    from sicog.evaluate.heldout import evaluate_heldout

    cfg = as_config(config)
    world_dir, out_dir = local_path(world), local_path(out)
    model_dirs = {name: local_path(uri) for name, uri in models.items()}
    rows = _role(_catalog(world_dir), "heldout", [])
    results = {}
    with _step("evaluate", out_dir, list(model_dirs.values())) as figures, _progress() as progress:
        for name, model_dir in model_dirs.items():
            start = time.perf_counter()
            result = evaluate_heldout(model_dir, rows, world_dir, out_dir / name / "predictions.jsonl", cfg.eval, progress=progress)
            seconds = {"heldout_seconds": round(time.perf_counter() - start, 2)}
            if cfg.eval.benchmarks:
                start = time.perf_counter()
                result.update(_benchmarks(cfg, model_dir, rows, world_dir, out_dir / name / "lmms"))
                seconds["benchmark_seconds"] = round(time.perf_counter() - start, 2)
            results[name] = {**result, "lineage": _read_json(model_dir / "lineage.json", [])}
            figures[name] = {**result, **seconds}
        write_json(out_dir / "eval.json", results)
    return results


def _benchmarks(cfg: SicogConfig, model_dir: Path, rows: list[dict], world_dir: Path, out_dir: Path) -> dict:
    """eval.benchmarks of one model through lmms-eval, in its own environment; the held-out tasks
    (sicog_heldout_*) read this cycle's held-out rows."""
    from sicog.evaluate.lmms import HELDOUT_EQUIVALENT, Judge, run_benchmarks

    public = [b for b in cfg.eval.benchmarks if b not in HELDOUT_EQUIVALENT]
    heldout = [b for b in cfg.eval.benchmarks if b in HELDOUT_EQUIVALENT]
    judge = Judge(cfg.eval.judge_endpoint, cfg.eval.judge_model, cfg.eval.judge_key_env) if cfg.eval.judge_endpoint else None
    device = "cuda" if _cuda() else "cpu"
    scores = run_benchmarks(model_dir, public, out_dir, heldout_rows=rows if heldout else None, image_root=world_dir,
                            limit=cfg.eval.benchmark_limit, max_new_tokens=cfg.eval.max_new_tokens, judge=judge, device=device)
    wanted = set(public) | set(heldout)
    return {key: value for key, value in scores.items() if key.removesuffix("_n") in wanted}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def heldout_scores(evaluation: dict) -> dict:
    """The scores of one model's eval.json entry (held-out metrics and benchmarks, 0-1 or None), without
    counts and lineage: what metrics.json's `heldout` and the promotion gate read."""
    return {key: value for key, value in evaluation.items()
            if key not in ("lineage", "errors") and not key.endswith("_n") and (value is None or isinstance(value, float))}


# --- report ---------------------------------------------------------------------------------------


def _budget(lineage: list[dict]) -> str:
    return " + ".join(f"{e['stage']} {e['steps']} ({e['data']})" for e in lineage)


@through_store
def report(config: SicogConfig | dict, world: str, curation: str, evaluation: str, warmups: dict[str, str], out: str) -> dict:
    """Assemble metrics.json and report.html of one cycle into `out`, with the promotion decision
    (sicog.lineage.promotion: may this cycle's model start the next cycle of its series?)."""
    from sicog.lineage import promotion, read_previous
    from sicog.report import write_report

    cfg = as_config(config)
    world_dir, cur_dir, eval_dir, out_dir = local_path(world), local_path(curation), local_path(evaluation), local_path(out)
    evals = json.loads((eval_dir / "eval.json").read_text())
    curation_data = json.loads((cur_dir / "curation.json").read_text())
    inputs = [cur_dir, eval_dir, *(local_path(u) for u in warmups.values())]
    timings: dict = {}
    for inp in inputs:
        timings.update(_read_json(inp / "timings.json", {}))
    losses: dict = {}  # "<model>/<stage>": the report overlays models stage by stage
    for name, ev in evals.items():
        for entry in ev["lineage"]:
            losses[f"{name}/{entry['stage']}"] = entry.get("loss_history", [])
    for name, uri in warmups.items():
        for entry in _read_json(local_path(uri) / "lineage.json", [])[-1:]:
            losses[f"{name}/{entry['stage']}"] = entry.get("loss_history", [])
    metrics = {
        "world": {"seed": cfg.world.seed, **_read_json(world_dir / "manifest.json", {}).get("counts", {})},
        "cycle": cfg.cycle,
        "seed": cfg.seed,
        "similarity": {t: getattr(cfg.curate, t).similarity for t in ("caption", "vqa", "text")},
        "thresholds": {"caption": cfg.curate.caption.threshold, "vqa": cfg.curate.vqa.threshold, "text": None,
                       "text_top_k": cfg.curate.text_top_k, "conversation": cfg.curate.conversation_threshold},
        "heldout": {name: heldout_scores(ev) for name, ev in evals.items()},
        "steps": {name: _budget(ev["lineage"]) for name, ev in evals.items()},
        "optimizer_steps": {name: sum(entry["steps"] for entry in ev["lineage"]) for name, ev in evals.items()},
        # The training loss of each model's last logged step: the most environment-sensitive figure of a run.
        "final_loss": {name: ev["lineage"][-1]["loss_history"][-1][1] if ev["lineage"] and ev["lineage"][-1].get("loss_history") else None
                       for name, ev in evals.items()},
        "curation": curation_data["quality"],
        "counts": {"quarantined": {step: t["quarantined"] for step, t in timings.items() if t.get("quarantined")}, "rejected": curation_data["rejected"],
                   "sample_failures": sum(t.get("failures", 0) for t in timings.values()),
                   "malformed": {task: q.get("malformed", 0) for task, q in curation_data["quality"].items()}},
        "timings_s": {step: t["seconds"] for step, t in timings.items()},
        "peak_rss_mb": max((t["peak_rss_mb"] for t in timings.values()), default=None),
        "peak_rss_mb_by_step": {step: t["peak_rss_mb"] for step, t in timings.items()},
    }
    metrics["promotion"] = promotion(cfg.promote, metrics["heldout"], read_previous(cfg.promote))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_report(out_dir, metrics, curation_data["scores"], losses)
    return metrics
