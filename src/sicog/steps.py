"""The SICOG steps as library functions: config + URIs in, files under an output URI out.

Each function here is what one KFP component calls (components/ only translates artifacts to URIs)
and what one CLI subcommand calls, so a user can run any single step on their own data. Every step
writes `step.json` (its own figures) and `timings.json` (its own seconds plus those of the steps it
consumed), so the last step of a cycle knows the whole cycle's timings without a second orchestrator.

References: arXiv 2503.12303, Sec. 3 (steps 1-4) and Table 13 (training stages).
"""

from __future__ import annotations

import json
import random
import resource
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from sicog.config import SicogConfig, validate_config
from sicog.records import read_jsonl, validate_records, write_json, write_jsonl
from sicog.store import local_path

# Which labeled records each training data name means (relative to the world directory).
TRAIN_DATA = {
    "align": "captions of the base split (stage 1 pairs images with captions)",
    "base": "the whole base split (stage 2 instruction data)",
    "perception": "annotated DD + CoD captions (step-1 warm-up)",
    "reasoning": "annotated DA + CoT answers (step-1 warm-up)",
    "curated": "curated self-generated data + train.pretrain_mix (stage 1.5)",
    "labeled": "base + annotated splits (the compute-matched control's stage 1.5)",
    "uncurated": "one random candidate per instance + train.pretrain_mix (ablation's stage 1.5)",
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


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())


# --- the demo world and the tiny model ------------------------------------------------------------


def make_world(config: SicogConfig | dict, out: str) -> dict:
    """Write the procedural world (images, splits, ground truth) under `out`."""
    from sicog.world import build_world

    cfg = as_config(config)
    out_dir = local_path(out)
    with _step("world", out_dir, []) as figures, _progress() as progress:
        manifest = build_world(out_dir, cfg.world, progress=progress)
        figures["counts"] = manifest.get("counts", {})
    return manifest


def init_model(config: SicogConfig | dict, world: str, out: str) -> str:
    """A fresh tiny LLaVA whose tokenizer is trained on the world's text."""
    from sicog.models import init_model as build
    from sicog.world import world_texts

    cfg = as_config(config)
    world_dir, out_dir = local_path(world), local_path(out)
    with _step("model-init", out_dir, [world_dir]):
        build(out_dir, world_texts(world_dir), cfg.model, image_size=cfg.world.image_size, seed=cfg.seed)
        write_json(out_dir / "lineage.json", [])
    return str(out_dir)


# --- step 1 and step 4: training ------------------------------------------------------------------


def _split(world_dir: Path, name: str, quarantine: list[dict]) -> list[dict]:
    good, bad = validate_records(world_dir / f"{name}.jsonl", world_dir)
    quarantine.extend({"split": name, **row} for row in bad)
    return good


def training_records(cfg: SicogConfig, data: str, world_dir: Path, curated_dir: Path | None) -> tuple[list[dict], list[dict]]:
    """(records, quarantine rows) for a training data name of TRAIN_DATA."""
    quarantine: list[dict] = []
    fmt = lambda r: r.get("meta", {}).get("format")  # noqa: E731
    if data == "align":
        records = [r for r in _split(world_dir, "base", quarantine) if r.get("meta", {}).get("task") == "caption"]
    elif data == "base":
        records = _split(world_dir, "base", quarantine)
    elif data == "perception":
        records = [r for r in _split(world_dir, "annotated", quarantine) if fmt(r) in ("dd", "cod")]
    elif data == "reasoning":
        records = [r for r in _split(world_dir, "annotated", quarantine) if fmt(r) in ("da", "cot")]
    elif data == "labeled":
        records = _split(world_dir, "base", quarantine) + _split(world_dir, "annotated", quarantine)
    elif data in ("curated", "uncurated"):
        if curated_dir is None:
            raise ValueError(f"training data {data!r} needs the curated dataset")
        records = list(read_jsonl(curated_dir / f"{data}.jsonl"))
        for split in cfg.train.pretrain_mix:
            records += _split(world_dir, split, quarantine)
    else:
        raise ValueError(f"unknown training data {data!r}; choose from {', '.join(TRAIN_DATA)}")
    return records, quarantine


def train(config: SicogConfig | dict, stage: str, data: str, model: str, world: str, out: str, name: str, curated: str | None = None) -> dict:
    """Train one stage (warmup | align | pretrain | instruct) of `model` on `data`; save to `out`."""
    from sicog.train.trainer import train_stage

    cfg = as_config(config)
    stage_cfg = getattr(cfg.train, stage)
    model_dir, world_dir, out_dir = local_path(model), local_path(world), local_path(out)
    curated_dir = local_path(curated) if curated else None
    records, quarantine = training_records(cfg, data, world_dir, curated_dir)
    with _step(f"train:{name}", out_dir, [model_dir, curated_dir]) as figures, _progress() as progress:
        log = train_stage(model_dir, records, world_dir, out_dir, stage_cfg, cfg.train.max_length, cfg.seed, name,
                          progress=progress, group_by_length=cfg.train.group_by_length, bf16=cfg.train.bf16)
        if quarantine:
            write_jsonl(out_dir / "quarantine.jsonl", quarantine)
        lineage = _read_json(model_dir / "lineage.json", [])
        lineage.append({"name": name, "stage": stage, "data": data, **{k: log[k] for k in ("steps", "loss_history", "train_seconds", "records", "skipped") if k in log}})
        write_json(out_dir / "lineage.json", lineage)
        figures.update({"records": len(records), "quarantined": len(quarantine), "steps": log.get("steps")})
    return log


# --- step 2: candidate generation -----------------------------------------------------------------

POOLS = {"caption": "pool_images", "vqa": "pool_vqa", "text": "pool_text"}


def sample(config: SicogConfig | dict, task: str, model: str, world: str, out: str) -> dict:
    """Sample candidates for the task's unlabeled pool (perception model for captions, reasoning
    model for VQA, base model for text-only) into `out/candidates.jsonl`."""
    from sicog.generate.sample import sample_candidates

    cfg = as_config(config)
    model_dir, world_dir, out_dir = local_path(model), local_path(world), local_path(out)
    records, quarantine = validate_records(world_dir / f"{POOLS[task]}.jsonl", world_dir, need_answer=False)
    with _step(f"sample:{task}", out_dir, [model_dir]) as figures, _progress() as progress:
        stats = sample_candidates(records, task, model_dir, out_dir / "candidates.jsonl", cfg.sample, cfg.seed, world_dir, progress=progress)
        write_jsonl(out_dir / "quarantine.jsonl", ({"split": POOLS[task], **row} for row in quarantine))
        figures.update(stats, quarantined=len(quarantine))
    return stats


# --- step 3: self-consistency ---------------------------------------------------------------------


def score(config: SicogConfig | dict, candidates: list[str], out: str) -> dict:
    """Score each instance's candidates by self-consistency and decide `kept` by its task's threshold.

    `candidates`: candidates JSONL files (or folders holding `candidates.jsonl`); tasks may be mixed
    and each is scored with its own section of `curate`, with one embedder for all. Writes
    `out/scored.jsonl` (one row per instance: id, scores in candidate index order, best, kept) and
    `out/rejected.jsonl` (every instance not kept, with its scores and reason).
    """
    from sicog.curate.embedder import Embedder
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
                embedder = Embedder(cfg.curate.embedder, batch_size=cfg.curate.embed_batch_size)
            scored, unscorable = score_instances(rows, task_cfg.similarity, embedder, task_cfg.short_answer_words)
            kept, rejected = select_instances(scored, task, task_cfg.threshold, cfg.curate.text_top_k if task == "text" else None)
            scored_all += scored
            rejected_all += unscorable + rejected
            figures[task] = {"instances": len(scored) + len(unscorable), "kept": len(kept), "similarity": task_cfg.similarity,
                             "threshold": task_cfg.threshold, "malformed": sum(len(r.get("malformed", [])) for r in scored)}
        write_jsonl(out_dir / "scored.jsonl", scored_all)
        write_jsonl(out_dir / "rejected.jsonl", rejected_all)
    return figures


# --- step 3 (cont.): curated data, uncurated ablation, curation quality ---------------------------


def curate(config: SicogConfig | dict, world: str, scored: list[str], out: str) -> dict:
    """Turn kept instances into LLaVA training records and measure curation against ground truth.

    Writes `curated.jsonl` (stage-1.5 data with provenance), `uncurated.jsonl` (the ablation: one
    random candidate of as many random instances, same size), `rejected.jsonl` and `curation.json`.
    """
    from sicog.curate.select import to_curated
    from sicog.evaluate.metrics import curation_quality

    cfg = as_config(config)
    world_dir, out_dir = local_path(world), local_path(out)
    scored_dirs = [local_path(uri) for uri in scored]
    truth = {row["id"]: row for row in read_jsonl(world_dir / "truth.jsonl")}
    with _step("curate", out_dir, scored_dirs) as figures:
        curated, uncurated, rejected, quality, scores = [], [], [], {}, {}
        by_task: dict[str, list[dict]] = {}
        for sdir in scored_dirs:
            for row in read_jsonl(sdir / "scored.jsonl"):
                by_task.setdefault(row["task"], []).append(row)
            rejected += list(read_jsonl(sdir / "rejected.jsonl"))
        rng = random.Random(cfg.seed)
        for task in ("caption", "vqa", "text"):  # every task is reported, also when nothing could be scored
            rows = by_task.get(task, [])
            kept = [r for r in rows if r["kept"]]
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
                quality[task]["conversations"] = sum(1 for r in task_curated if r["id"].endswith("-conv"))
            scores[task] = {"best": [r["score"] for r in rows], "all": [s for r in rows for s in r["scores"] if s is not None]}
        write_jsonl(out_dir / "curated.jsonl", curated)
        write_jsonl(out_dir / "uncurated.jsonl", uncurated)
        write_jsonl(out_dir / "rejected.jsonl", rejected)
        write_json(out_dir / "curation.json", {"quality": quality, "scores": scores, "rejected": dict(Counter(r["task"] for r in rejected))})
        figures.update(curated=len(curated), uncurated=len(uncurated), rejected=len(rejected))
    return quality


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(config: SicogConfig | dict, models: dict[str, str], world: str, out: str) -> dict:
    """Held-out VQA exact match (direct-answer prompt) and caption attribute recall (DD prompt) of
    each named model; writes `out/<name>/predictions.jsonl` and `out/eval.json`."""
    from sicog.evaluate.heldout import evaluate_heldout

    cfg = as_config(config)
    world_dir, out_dir = local_path(world), local_path(out)
    model_dirs = {name: local_path(uri) for name, uri in models.items()}
    results = {}
    with _step("evaluate", out_dir, list(model_dirs.values())) as figures, _progress() as progress:
        for name, model_dir in model_dirs.items():
            result = evaluate_heldout(model_dir, world_dir, out_dir / name / "predictions.jsonl", cfg.eval, progress=progress)
            results[name] = {**result, "lineage": _read_json(model_dir / "lineage.json", [])}
            figures[name] = result
        write_json(out_dir / "eval.json", results)
    return results


# --- report ---------------------------------------------------------------------------------------


def _budget(lineage: list[dict]) -> str:
    return " + ".join(f"{e['stage']} {e['steps']} ({e['data']})" for e in lineage)


def report(config: SicogConfig | dict, world: str, curation: str, evaluation: str, warmups: dict[str, str], out: str) -> dict:
    """Assemble metrics.json and report.html of one cycle into `out`."""
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
        "heldout": {name: {"vqa_accuracy": ev["vqa_accuracy"], "caption_attribute_recall": ev["caption_attribute_recall"]} for name, ev in evals.items()},
        "steps": {name: _budget(ev["lineage"]) for name, ev in evals.items()},
        "curation": curation_data["quality"],
        "counts": {"quarantined": {step: t["quarantined"] for step, t in timings.items() if t.get("quarantined")}, "rejected": curation_data["rejected"],
                   "sample_failures": sum(t.get("failures", 0) for t in timings.values()),
                   "malformed": {task: q.get("malformed", 0) for task, q in curation_data["quality"].items()}},
        "timings_s": {step: t["seconds"] for step, t in timings.items()},
        "peak_rss_mb": max((t["peak_rss_mb"] for t in timings.values()), default=None),
        "peak_rss_mb_by_step": {step: t["peak_rss_mb"] for step, t in timings.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_report(out_dir, metrics, curation_data["scores"], losses)
    return metrics
