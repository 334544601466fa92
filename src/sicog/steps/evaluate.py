"""The evaluate step: held-out scores of the cycle's models, and the public benchmarks through lmms-eval.

Inputs: the world (its `heldout` role) and the models to compare by name (base, cycle, control, and the
uncurated ablation when run). Output: `<name>/predictions.jsonl`, `<name>/lmms/` (benchmark runs) and
`eval.json`: one flat per-model dict of held-out metrics (VQA exact match with the direct-answer
prompt, caption attribute recall with the DD prompt) and `eval.benchmarks` scores, with each model's
lineage. Figures: those scores and the wall seconds of both parts per model.
Paper: Sec. 4 (evaluation on held-out and public benchmarks: MMStar, AI2D, ScienceQA, ...).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from sicog import store
from sicog.console import progress
from sicog.data import read_role, run_catalog
from sicog.records import write_json
from sicog.steps._io import StepIO, as_config, open_step, read_json


def _benchmarks(cfg, model_dir: Path, rows: list[dict], world_dir: Path, out_dir: Path, datasets_cache: Path | None) -> dict:
    """eval.benchmarks of one model through lmms-eval, in its own environment, with eval.backend in the
    config's dtype; the held-out tasks (sicog_heldout_*) read this cycle's held-out rows."""
    import torch

    from sicog.evaluate.lmms import HELDOUT_EQUIVALENT, Judge, run_benchmarks

    public = [b for b in cfg.eval.benchmarks if b not in HELDOUT_EQUIVALENT]
    heldout = [b for b in cfg.eval.benchmarks if b in HELDOUT_EQUIVALENT]
    judge = Judge(cfg.eval.judge_endpoint, cfg.eval.judge_model, cfg.eval.judge_key_env) if cfg.eval.judge_endpoint else None
    scores = run_benchmarks(
        model_dir,
        public,
        out_dir,
        heldout_rows=rows if heldout else None,
        image_root=world_dir,
        limit=cfg.eval.benchmark_limit,
        max_new_tokens=cfg.eval.max_new_tokens,
        judge=judge,
        backend=cfg.eval.backend,
        batch_size=cfg.eval.batch_size if cfg.eval.backend == "vllm" else 1,
        device="cuda" if torch.cuda.is_available() else "cpu",
        dtype=cfg.train.weights_dtype,
        datasets_cache=datasets_cache,
    )
    wanted = set(public) | set(heldout)
    return {key: value for key, value in scores.items() if key.removesuffix("_n") in wanted}


def evaluate(config, io: StepIO) -> dict:
    """io.inputs: {"world", "models": {name: model URI}}. Returns eval.json's content."""
    from sicog.evaluate.heldout import evaluate_heldout
    from sicog.evaluate.lmms import check_cache

    cfg = as_config(config)
    results = {}
    with open_step(io, cycle=cfg.cycle) as step, progress() as bar, contextlib.ExitStack() as stack:
        # The benchmarks' dataset cache: fetched once for all models (or the mounted PVC's folder itself).
        cache = stack.enter_context(store.local_input(cfg.eval.datasets_cache)) if cfg.eval.benchmarks and cfg.eval.datasets_cache else None
        if cache is not None:  # before any model is evaluated: a missing benchmark is one line, not an hour in
            check_cache(cfg.eval.benchmarks, cache, cfg.eval.datasets_cache)
        world_dir = step.input("world")
        rows = read_role(run_catalog(world_dir), "heldout")[0]
        for name, model_dir in step.inputs["models"].items():
            start = time.perf_counter()
            result = evaluate_heldout(model_dir, rows, world_dir, step.out / name / "predictions.jsonl", cfg.eval, progress=bar)
            seconds = {"heldout_seconds": round(time.perf_counter() - start, 2)}
            if cfg.eval.benchmarks:
                start = time.perf_counter()
                result.update(_benchmarks(cfg, model_dir, rows, world_dir, step.out / name / "lmms", cache))
                seconds["benchmark_seconds"] = round(time.perf_counter() - start, 2)
            results[name] = {**result, "lineage": read_json(model_dir / "lineage.json", [])}
            step.figures[name] = {**result, **seconds}
        write_json(step.out / "eval.json", results)
    return results
