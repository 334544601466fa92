"""SICOG step 2 as library calls: plan a task's candidates, sample them shard by shard, collect them.

Input: validated source records of one task (images under `image_root`), a model directory (the
perception model for captions, the reasoning model for VQA, the backbone LLM for text-only: a
causal-LM folder, see `sicog.generate.backbone`) or, with a served `engine`, an OpenAI-compatible
endpoint serving it.
Output: per shard, chunk files + manifest in the store (`sicog.generate.shards`); collected, a
candidates JSONL (`{"id", "task", "format", "index", "seed", "prompt", "image"?, "text", "model"}`,
sorted by id then candidate index, so it does not depend on the shard count or completion order)
and, beside it, `<stem>.failures.jsonl` with every candidate that could not be generated and why
(`"text": null`, `"error"`); nothing is dropped silently.
References: paper Sec. 3.2 (candidate plans, temperature 0.7, top_p 0.95), App. A (text-only
prompts are answered by the backbone LLM).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from sicog.config import SampleConfig
from sicog.errors import UserError
from sicog.generate.plan import Task, plan_requests
from sicog.generate.shards import read_shard, run_shard, shard_dir, shard_records
from sicog.records import Candidate, write_jsonl


def failures_path(out_path: str | Path) -> Path:
    """Where the failed candidates of `out_path` go: `<stem>.failures.jsonl` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.failures.jsonl")


def _plan_of(task: Task, cfg: SampleConfig) -> dict[str, int] | int:
    return {"caption": cfg.caption_plan, "vqa": cfg.vqa_plan, "text": cfg.text_candidates}[task]


def model_image_edge(model_uri: str | Path | None) -> int:
    """The shorter image side the model's processor resizes to (CLIP: size.shortest_edge, else the
    height of size / crop_size), from preprocessor_config.json or (transformers 5) the image_processor
    of processor_config.json, in a local folder or the store; 0 when there is none (a text-only LLM).
    The served engines' client resizes images to it."""
    from sicog import store

    for name in ("preprocessor_config.json", "processor_config.json") if model_uri else ():
        uri = store.join(str(model_uri), name)
        if not store.exists(uri):
            continue
        config = json.loads(store.read_text(uri))
        config = config.get("image_processor", config)
        size, crop = config.get("size") or {}, config.get("crop_size") or {}
        if isinstance(size, int):
            return size
        for value in (size.get("shortest_edge"), size.get("height"), crop.get("height")):
            if isinstance(value, int) and value > 0:
                return value
    return 0


def make_sampler(cfg: SampleConfig, model_dir: str | Path | None, image_root: str | Path, model_name: str | None = None):
    """The configured engine: in-process transformers (a LLaVA or a causal-LM folder; `model_name`
    is what its candidates record, default: the folder's own name), or a served OpenAI-compatible
    engine at `cfg.endpoint` (`model_dir`, when given, only sizes the client-side image resize)."""
    if cfg.engine != "local":
        from sicog.generate.remote import RemoteSampler

        if not cfg.endpoint:
            raise UserError(
                f"sample.engine={cfg.engine} needs sample.endpoint here (e.g. http://vllm:8000/v1); only a pipeline compiled for a cluster deploys its own servers"
            )
        edge = model_image_edge(model_dir) if cfg.image_edge == -1 else cfg.image_edge
        return RemoteSampler(
            cfg.endpoint,
            image_root,
            served_model=cfg.served_model,
            concurrency=cfg.concurrency,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            timeout_s=cfg.timeout_s,
            max_attempts=cfg.max_attempts,
            engine=cfg.engine,
            share_prefill=cfg.share_prefill,
            image_edge=edge,
        )
    from sicog.generate.local import LocalSampler

    return LocalSampler(
        model_dir, image_root, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, model_name=model_name
    )


def model_fingerprint(cfg: SampleConfig, model_dir: str | Path) -> str:
    """Which model samples: the served model at its endpoint, or a hash of the model folder's config
    and training lineage (loss history included), so a retrained model never resumes stale chunks."""
    if cfg.engine != "local":
        return f"{cfg.engine}:{cfg.endpoint}#{cfg.served_model}"
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for name in ("config.json", "lineage.json"):
        if (model_dir / name).is_file():
            digest.update((model_dir / name).read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()


def _fingerprint(task: str, shard: int, cfg: SampleConfig, cycle_seed: int, records: list[dict], model_id: str) -> dict:
    """What a shard's chunks were planned from; a resumed shard must match it exactly."""
    return {
        "model": model_id,
        "task": task,
        "shard": shard,
        "shards": cfg.shards,
        "chunk_size": cfg.chunk_size,
        "cycle_seed": cycle_seed,
        "plan": _plan_of(task, cfg),
        "records": len(records),
        "ids_sha256": hashlib.sha256("\n".join(r["id"] for r in records).encode("utf-8")).hexdigest(),
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        # served engines: how candidates are requested changes what is sampled (seeds of n-requests, pixels)
        **({"share_prefill": cfg.share_prefill, "image_edge": cfg.image_edge} if cfg.engine != "local" else {}),
    }


def sample_shard(
    records: list[dict],
    task: Task,
    model_dir: str | Path,
    shard_uri: str,
    shard: int,
    cfg: SampleConfig,
    cycle_seed: int,
    image_root: str | Path,
    advance=None,
    model_id: str | None = None,
    model_name: str | None = None,
) -> dict:
    """Sample the unfinished chunks of shard `shard` of `cfg.shards` into `shard_uri`; returns counts.
    `model_id` identifies the sampling model in the shard's plan (default: `model_fingerprint`);
    `model_name` is what the candidates record in `model` (see make_sampler)."""
    mine = shard_records(records, shard, cfg.shards)
    plan = _plan_of(task, cfg)
    chunks = [plan_requests(mine[i : i + cfg.chunk_size], task, plan, cycle_seed) for i in range(0, len(mine), cfg.chunk_size)]
    start = time.perf_counter()
    stats = run_shard(
        shard_uri,
        chunks,
        lambda: make_sampler(cfg, model_dir, image_root, model_name),
        _fingerprint(task, shard, cfg, cycle_seed, mine, model_id or model_fingerprint(cfg, model_dir)),
        advance=advance,
    )
    return {"shard": shard, "records": len(mine), **stats, "seconds": round(time.perf_counter() - start, 3)}


def collect_candidates(shard_uris: list[str], out_path: str | Path) -> dict:
    """Gather complete shards into one candidates file (+ failures beside it), sorted by (id, index).

    Refuses a duplicated (id, index): shards partition the pool, so one would mean two runs mixed.
    """
    rows = [row for uri in shard_uris for row in read_shard(uri)]
    rows.sort(key=lambda r: (r["id"], r["index"]))
    keys = [(r["id"], r["index"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise UserError("collected shards hold a candidate twice; were shards of different runs mixed?")
    rows = [Candidate.from_row(r).to_row() for r in rows]  # the candidates contract, checked where it is written
    good = [r for r in rows if r.get("error") is None]
    failed = [r for r in rows if r.get("error") is not None]
    write_jsonl(out_path, good)
    write_jsonl(failures_path(out_path), failed)
    return {"candidates": len(good), "failures": len(failed), "shards": len(shard_uris)}


def sample_candidates(
    records: list[dict],
    task: Task,
    model_dir: str | Path,
    out_path: str | Path,
    cfg: SampleConfig,
    cycle_seed: int,
    image_root: str | Path,
    progress=None,
    work_uri: str | None = None,
    model_name: str | None = None,
) -> dict:
    """Every shard of the pool in turn (resuming finished chunks under `work_uri`), then collected.

    `work_uri` defaults to `<stem>.work/` beside `out_path`, so re-running the same command resumes.
    Returns counts, wall seconds and output tokens.
    """
    out_path = Path(out_path)
    work_uri = work_uri or str(out_path.with_name(f"{out_path.stem}.work"))
    task_id = progress.add_task(f"sampling {task}", total=len(plan_requests(records, task, _plan_of(task, cfg), cycle_seed))) if progress else None
    advance = (lambda n: progress.advance(task_id, n)) if progress else None
    start = time.perf_counter()
    uris = [shard_dir(work_uri, task, i) for i in range(cfg.shards)]
    model_id = model_fingerprint(cfg, model_dir)
    shard_stats = [sample_shard(records, task, model_dir, uri, i, cfg, cycle_seed, image_root, advance, model_id, model_name) for i, uri in enumerate(uris)]
    seconds = time.perf_counter() - start
    counts = collect_candidates(uris, out_path)
    return {
        **counts,
        "seconds": round(seconds, 3),
        "output_tokens": sum(s["output_tokens"] for s in shard_stats),
        "chunks_sampled": sum(s["chunks_sampled"] for s in shard_stats),
    }
