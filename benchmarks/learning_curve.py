"""The base model's learning curve in a world: held-out accuracy per question kind vs labeled records and steps.

Self-training can only help where the model is data-limited: well above chance on the kinds of
question asked, not yet saturated. This measures where that is. For each point `IMAGES:STEPS` it
trains the base model as the cycle does (a fresh tiny model, stage 1 projector-only on the
captions of the first IMAGES base images, stage 2 on their DD captions and DA questions plus the
matching share of text-only QA, STEPS optimizer steps; `sicog.train.trainer.train_stage`, the
function every training task of the cycle runs) and evaluates it on the world's held-out split
(`sicog.evaluate.heldout.evaluate_heldout`, greedy). Printed per point: VQA accuracy per question
kind (the world's `qtype`s), overall, and caption attribute recall; and per kind the majority
baseline (the most frequent training answer of that kind, scored on the held-out questions), the
accuracy a model that ignores the image can reach.

Usage (stage budgets, learning rates and the model come from the config):
    python benchmarks/learning_curve.py --config configs/demo.yaml --points 100:400,300:400,1000:400 \\
        [--set world.n_heldout=200 ...] [--out runs/curve]
Writes OUT/curve.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sicog.config import load_config  # noqa: E402
from sicog.data import read_role, run_catalog  # noqa: E402
from sicog.evaluate.heldout import evaluate_heldout  # noqa: E402
from sicog.evaluate.metrics import normalize_answer  # noqa: E402
from sicog.models import init_model  # noqa: E402
from sicog.records import read_jsonl  # noqa: E402
from sicog.train.trainer import train_stage  # noqa: E402
from sicog.world import QTYPES, build_world, world_catalog, world_texts  # noqa: E402
from sicog.world.build import TEXT_SHARE_OF_BASE  # noqa: E402


def image_index(record_id: str) -> int | None:
    """The base image a base record belongs to ("base-00042-q1" -> 42); None for text-only records."""
    parts = record_id.split("-")
    return int(parts[1]) if parts[1].isdigit() else None


def labeled_subset(base: list[dict], n_images: int) -> list[dict]:
    """The base records of the first `n_images` images, plus the same share of text-only QA as the world's."""
    n_text = n_images // TEXT_SHARE_OF_BASE
    out = []
    for rec in base:
        i = image_index(rec["id"])
        if (i is not None and i < n_images) or (i is None and int(rec["id"].rsplit("-", 1)[1]) < n_text):
            out.append(rec)
    return out


def majority_baseline(train: list[dict], heldout: list[dict]) -> dict[str, float]:
    """Per qtype: held-out accuracy of always answering the most frequent training answer of that qtype."""
    answers: dict[str, Counter] = defaultdict(Counter)
    for rec in train:
        if rec.get("meta", {}).get("task") == "vqa":
            answers[rec["meta"]["qtype"]][normalize_answer(rec["conversations"][-1]["value"])] += 1
    out = {}
    for qtype in QTYPES:
        rows = [r for r in heldout if r["task"] == "vqa" and r["qtype"] == qtype]
        if rows and answers[qtype]:
            top = answers[qtype].most_common(1)[0][0]
            out[qtype] = sum(normalize_answer(str(r["answer"])) == top for r in rows) / len(rows)
    return out


def per_qtype(predictions: Path, heldout: list[dict]) -> dict[str, float]:
    qtype = {r["id"]: r.get("qtype") for r in heldout}
    hits: dict[str, list[bool]] = defaultdict(list)
    for pred in read_jsonl(predictions):
        if pred["task"] == "vqa":
            hits[qtype[pred["id"]]].append(bool(pred["correct"]))
    return {q: sum(v) / len(v) for q, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE config override (repeatable)")
    ap.add_argument("--points", default="100:400,300:400,1000:400", help="IMAGES:STEPS,... (labeled base images : stage-2 steps)")
    ap.add_argument("--out", default="runs/curve")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    points = [tuple(int(x) for x in p.split(":")) for p in args.points.split(",")]
    cfg = load_config(args.config, args.overrides)
    cfg.world.n_base = max(n for n, _ in points)
    out = Path(args.out)
    world = out / "world"
    start = time.perf_counter()
    build_world(world, cfg.world)
    world_catalog(world)
    heldout = read_role(run_catalog(world), "heldout")[0]
    base = list(read_jsonl(world / "base.jsonl"))
    fresh = out / "fresh"
    init_model(fresh, world_texts(world), cfg.model, image_size=cfg.world.image_size, seed=cfg.seed)
    print(f"world + model: {time.perf_counter() - start:.0f} s; held-out VQA questions: {sum(r['task'] == 'vqa' for r in heldout)}", flush=True)

    aligned: dict[int, Path] = {}
    results = []
    for n, steps in points:
        t0 = time.perf_counter()
        train = labeled_subset(base, n)
        if n not in aligned:
            captions = [r for r in train if r.get("meta", {}).get("task") == "caption"]
            aligned[n] = out / f"align-{n}"
            train_stage(fresh, captions, world, aligned[n], cfg.train.align, cfg.train, cfg.seed, f"align-{n}", threads=args.threads)
        model = out / f"base-{n}-{steps}"
        stage = cfg.train.instruct.model_copy(update={"max_steps": steps})
        log = train_stage(aligned[n], train, world, model, stage, cfg.train, cfg.seed, f"base-{n}-{steps}", threads=args.threads)
        scores = evaluate_heldout(model, heldout, world, model / "predictions.jsonl", cfg.eval)
        row = {
            "images": n,
            "records": len(train),
            "steps": steps,
            "epochs": round(steps * stage.batch_size / len(train), 2),
            "final_loss": log["loss_history"][-1][1] if log.get("loss_history") else None,
            "vqa_accuracy": scores["vqa_accuracy"],
            "caption_attribute_recall": scores["caption_attribute_recall"],
            "per_qtype": per_qtype(model / "predictions.jsonl", heldout),
            "majority": majority_baseline(train, heldout),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        (out / "curve.json").write_text(json.dumps({"config": args.config, "overrides": args.overrides, "points": results}, indent=2) + "\n")

    qtypes = [q for q in QTYPES if any(q in r["per_qtype"] for r in results)]
    print("\n| images | records | steps | epochs | " + " | ".join(qtypes) + " | VQA | caption recall | s |")
    print("|---|---|---|---|" + "---|" * len(qtypes) + "---|---|---|")
    for r in results:
        cells = [f"{r['per_qtype'].get(q, float('nan')):.2f} ({r['majority'].get(q, float('nan')):.2f})" for q in qtypes]
        print(
            f"| {r['images']} | {r['records']} | {r['steps']} | {r['epochs']} | "
            + " | ".join(cells)
            + f" | {r['vqa_accuracy']:.3f} | {r['caption_attribute_recall']:.3f} | {r['seconds']:.0f} |"
        )
    print("\nper kind: held-out accuracy (majority-answer baseline)")


if __name__ == "__main__":
    main()
