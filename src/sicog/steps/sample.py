"""The sample step (step 2): candidates for a task's unlabeled pool, one shard per task, then collected.

`sample_shard` — Inputs: the world (the pool role of the task) and the sampling model (the perception
model for captions, the reasoning model for VQA, the backbone LLM for text-only), or the run's server
of that model. Output: the shard's chunks under the run's sampling folder (`work`/sampling/<task>/
shard-<i>: the one place a retried or re-run shard resumes from, chunk by chunk) and a small folder
with the shard's figures. `collect` — Output: `candidates.jsonl` (ids, formats, per-candidate seeds),
the failures beside it with their reasons, and the pool's quarantine. Figures: candidates, failures,
output tokens, seconds.
A series samples a new slice of each pool every cycle with `data.pool_per_cycle`, and candidate seeds
derive from (seed, cycle, record id, candidate index).
Paper: Sec. 3.2 (2 CoD + 1 DD per image, 2 CoT + 1 DA per question, 3 answers per text prompt;
temperature 0.7, top_p 0.95) and App. A (text-only prompts answered by the backbone LLM).
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sicog import store
from sicog.console import progress
from sicog.data import read_role, run_catalog
from sicog.errors import UserError
from sicog.records import jsonl_lines, write_json, write_jsonl
from sicog.steps._io import StepIO, as_config, open_step

POOLS = {"caption": "pool_images", "vqa": "pool_vqa", "text": "pool_text"}  # the catalog role each task samples
QUARANTINE = "quarantine.jsonl"  # the pool's bad rows, kept beside shard 0's chunks for the collector
TIMINGS = "timings.json"  # each shard's timings row, kept beside its chunks for the collector


@contextmanager
def _text_sampler_model(cfg, model_dir: Path | None):
    """(model folder, model name) that answers text-only prompts with the local engine: `sample.backbone`
    (any store URI), else `model_dir` when it already is a causal LM (the extract-backbone output),
    else the backbone extracted from the LLaVA at `model_dir` into a temporary folder."""
    from sicog.generate.backbone import extract_backbone, is_multimodal

    if cfg.sample.backbone:
        with store.local_input(cfg.sample.backbone) as path:
            yield path, cfg.sample.backbone
        return
    if model_dir is None:
        raise UserError("the text task needs --model (a LLaVA or its backbone LLM) or sample.backbone")
    if not is_multimodal(model_dir):
        yield model_dir, None
        return
    with tempfile.TemporaryDirectory(prefix="sicog-backbone-") as tmp:
        yield extract_backbone(model_dir, Path(tmp) / "backbone", trust_remote_code=cfg.model.trust_remote_code), None


def cycle_pool(records: list[dict], cycle: int, per_cycle: int, role: str) -> list[dict]:
    """This cycle's slice of a pool role (data.pool_per_cycle; 0: all of it)."""
    if not per_cycle:
        return records
    start = (cycle - 1) * per_cycle
    if start + per_cycle > len(records):
        raise UserError(
            f"the {role} pool has {len(records)} records; cycle {cycle} with data.pool_per_cycle={per_cycle} needs rows "
            f"{start}..{start + per_cycle - 1}: add records to the pool or lower data.pool_per_cycle"
        )
    return records[start : start + per_cycle]


def sample_shard(config, io: StepIO, task: str, shard: int, work: str, server: dict | None = None) -> dict:
    """Sample shard `shard` of `sample.shards` of the task's pool into `work`'s sampling folder, resuming
    its finished chunks. io.inputs: {"world", "model"?}. `server`: the run's own server of this model
    (sicog.cluster.serving.launch_server), in place of `sample.endpoint` and `sample.served_model`; its
    `image_edge` sizes the images unless configured."""
    from sicog.generate.sample import sample_shard as run
    from sicog.generate.seeds import cycle_seed
    from sicog.generate.shards import shard_dir

    cfg = as_config(config)
    if task not in POOLS:
        raise UserError(f"unknown task {task!r}: choose {', '.join(POOLS)}")
    if not 0 <= shard < cfg.sample.shards:
        raise UserError(f"shard {shard} is outside 0..{cfg.sample.shards - 1} (sample.shards={cfg.sample.shards})")
    if server:
        cfg.sample.endpoint, cfg.sample.served_model = server["endpoint"], server["served_model"]
        if cfg.sample.image_edge == -1:
            cfg.sample.image_edge = int(server.get("image_edge", 0))
    uri = shard_dir(work, task, shard)
    with open_step(io, cycle=cfg.cycle) as step, progress() as bar, ExitStack() as stack:
        world_dir, model_dir = step.input("world"), step.inputs.get("model")
        records, quarantine = read_role(run_catalog(world_dir), POOLS[task])
        records = cycle_pool(records, cfg.cycle, cfg.data.pool_per_cycle, POOLS[task])
        sampler_dir, model_name = model_dir, None
        if task == "text" and cfg.sample.engine == "local":
            sampler_dir, model_name = stack.enter_context(_text_sampler_model(cfg, model_dir))
        todo = bar.add_task(f"sampling {task} shard {shard}", total=None)
        stats = run(
            records,
            task,
            sampler_dir,
            uri,
            shard,
            cfg.sample,
            cycle_seed(cfg.seed, cfg.cycle),
            world_dir,
            advance=lambda n: bar.advance(todo, n),
            model_name=model_name,
        )
        write_json(step.out / "shard.json", {"task": task, "shard": shard, "uri": uri, **stats})
        if shard == 0:  # the pool's quarantine is reported once, by shard 0, beside its chunks
            step.quarantine = quarantine
            store.write_text(store.join(uri, QUARANTINE), "".join(json.dumps(r) + "\n" for r in quarantine))
        step.figures.update(stats)
    store.write_text(store.join(uri, TIMINGS), store.read_text(store.join(io.out, TIMINGS)))
    return stats


def collect(config, io: StepIO, task: str, work: str) -> dict:
    """Gather every shard of one task from `work`'s sampling folder (each must be complete) into
    io.out/candidates.jsonl + failures, sorted by (id, index), with the pool's quarantine."""
    from sicog.generate.sample import collect_candidates
    from sicog.generate.shards import shard_dir

    cfg = as_config(config)
    uris = [shard_dir(work, task, i) for i in range(cfg.sample.shards)]
    with open_step(io, cycle=cfg.cycle) as step:
        for uri in uris:
            step.timings.update(json.loads(store.read_text(store.join(uri, TIMINGS))) if store.exists(store.join(uri, TIMINGS)) else {})
        stats = collect_candidates(uris, step.out / "candidates.jsonl")
        quarantined = store.join(uris[0], QUARANTINE)
        text = store.read_text(quarantined) if store.exists(quarantined) else ""
        write_jsonl(step.out / QUARANTINE, [json.loads(line) for line in jsonl_lines(text) if line.strip()])
        # failures and quarantined rows were counted by the shard steps' own timings
        step.figures.update(stats, quarantined=0)
    return stats


def sample(config, io: StepIO, task: str, work: str | None = None) -> dict:
    """One process's way (the CLI): every shard in turn into `work` (default io.out/work; a re-run resumes
    it), each with its figures under work/shards/<i>, then collected into io.out."""
    cfg = as_config(config)
    work = work or store.join(io.out, "work")
    for i in range(cfg.sample.shards):
        sample_shard(cfg, StepIO(f"sample:{task}:shard-{i:05d}", store.join(work, "shards", str(i)), io.inputs), task, i, work)
    return collect(cfg, StepIO(f"collect:{task}", io.out), task, work)
