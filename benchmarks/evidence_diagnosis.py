"""Why a cycle did or did not beat its base model: one `sicog evidence` seed (or `sicog cycle --oracle` run), taken apart.

Three checks (the issue's point 4), on the run's own artifacts (kfp.local keeps every task's output
under RUN/pipeline/):
1. Does stage 1.5 change the model? Mean loss on (up to --records of) the curated data and the oracle
   data before stage 1.5 (the stage-1 model every arm starts from), after it (cycle/pretrain,
   oracle/pretrain) and after stage 2 (cycle/instruct, oracle/instruct).
2. Does stage 2 wash it out? Held-out VQA accuracy per question kind after stage 1.5 and after stage 2,
   for the cycle and the oracle, beside the base model.
3. Are the curated labels what the report says? Per question kind: kept pseudo-labels' accuracy against
   the world's truth, mean candidate accuracy, kept / instances; and the oracle data's agreement with truth.

Usage: python benchmarks/evidence_diagnosis.py runs/evidence-shift/seed-0 [--records 200]
Prints Markdown tables and writes RUN/diagnosis.json.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from sicog.config import EvalConfig  # noqa: E402
from sicog.data import read_role, run_catalog  # noqa: E402
from sicog.evaluate.heldout import evaluate_heldout  # noqa: E402
from sicog.evaluate.metrics import curation_quality, normalize_answer  # noqa: E402
from sicog.models import load_model  # noqa: E402
from sicog.records import read_jsonl  # noqa: E402
from sicog.train.data import Collator, LazyRecords, pop_late_skips  # noqa: E402
from sicog.world import QTYPES  # noqa: E402

STAGES = ("stage1/align", "base/instruct", "cycle/pretrain", "cycle/instruct", "oracle/pretrain", "oracle/instruct")


def models_of(pipeline: Path) -> dict[str, Path]:
    """Every trained model of the run by its last stage's name (its lineage), e.g. "cycle/pretrain"."""
    found = {}
    for lineage in pipeline.glob("*/trained/lineage.json"):
        stages = json.loads(lineage.read_text())
        if stages:
            found[stages[-1]["name"]] = lineage.parent
    return found


@torch.no_grad()
def mean_loss(model_dir: Path, records: list[dict], image_root: Path, max_length: int = 512, batch: int = 16) -> float | None:
    model, processor = load_model(model_dir)
    model.eval()
    data = LazyRecords(records, processor, image_root, max_length)
    collate = Collator(processor.tokenizer.pad_token_id)
    total, tokens = 0.0, 0
    for start in range(0, len(data), batch):
        inputs = pop_late_skips(collate([data[i] for i in range(start, min(start + batch, len(data)))]), data)
        n = int((inputs["labels"][:, 1:] != -100).sum())
        total += float(model(**inputs).loss) * n
        tokens += n
    return total / tokens if tokens else None


def per_qtype(predictions: Path, heldout: list[dict]) -> dict[str, float]:
    kind = {r["id"]: r.get("qtype") for r in heldout}
    hits: dict[str, list[bool]] = defaultdict(list)
    for pred in read_jsonl(predictions):
        if pred["task"] == "vqa":
            hits[kind[pred["id"]]].append(bool(pred["correct"]))
            hits["all"].append(bool(pred["correct"]))
    return {q: round(sum(v) / len(v), 3) for q, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--records", type=int, default=200, help="records of each data set the losses are taken on")
    args = ap.parse_args()
    (pipeline,) = [p for p in (args.run / "pipeline").iterdir() if p.is_dir()]
    world, curated = pipeline / "make-world" / "world", pipeline / "curate" / "curated"
    models = models_of(pipeline)
    missing = [s for s in STAGES if s not in models]
    if missing:
        raise SystemExit(f"{args.run}: no model for {', '.join(missing)} (a run with --oracle?)")
    catalog = run_catalog(world)
    heldout = read_role(catalog, "heldout")[0]
    truth = {r["id"]: r for r in read_role(catalog, "truth")[0]}
    out: dict = {}

    # 1. Loss on the stage-1.5 data before / after stage 1.5 / after stage 2.
    data = {name: list(read_jsonl(curated / f"{name}.jsonl"))[: args.records] for name in ("curated", "oracle")}
    out["loss"] = {
        name: {stage: mean_loss(models[stage], records, world) for stage in ("stage1/align", f"{arm}/pretrain", f"{arm}/instruct", "base/instruct")}
        for name, records, arm in (("curated", data["curated"], "cycle"), ("oracle", data["oracle"], "oracle"))
    }

    # 2. Held-out VQA per kind after stage 1.5 and after stage 2.
    evaluations = args.run / "diagnosis"
    out["heldout"] = {}
    for stage in ("base/instruct", "cycle/pretrain", "cycle/instruct", "oracle/pretrain", "oracle/instruct"):
        predictions = evaluations / stage.replace("/", "-") / "predictions.jsonl"
        predictions.parent.mkdir(parents=True, exist_ok=True)
        evaluate_heldout(models[stage], heldout, world, predictions, EvalConfig(max_new_tokens=8))  # VQA answers are one word
        out["heldout"][stage] = per_qtype(predictions, heldout)

    # 3. The curated labels per kind against truth, and the oracle data against truth.
    scored = [r for f in pipeline.glob("score/*/scored.jsonl") for r in read_jsonl(f) if r["task"] == "vqa"]
    out["curation"] = {}
    for qtype in QTYPES:
        rows = [r for r in scored if truth.get(r["id"], {}).get("qtype") == qtype]
        if rows:
            q = curation_quality(rows, truth, "vqa", [])
            out["curation"][qtype] = {k: q[k] for k in ("kept_accuracy", "mean_candidate_accuracy", "kept", "total")}
    oracle_vqa = [r for r in read_jsonl(curated / "oracle.jsonl") if r["sicog"]["task"] == "vqa"]
    out["oracle_agrees_with_truth"] = (
        sum(normalize_answer(r["conversations"][-1]["value"]) == normalize_answer(str(truth[r["id"]]["answer"])) for r in oracle_vqa) / len(oracle_vqa)
        if oracle_vqa
        else None
    )
    (args.run / "diagnosis.json").write_text(json.dumps(out, indent=2) + "\n")

    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print("| data | before stage 1.5 (stage 1) | after stage 1.5 | after stage 2 | base model |\n|---|---|---|---|---|")
    for name, losses in out["loss"].items():
        print(f"| {name} | " + " | ".join(fmt(v) for v in losses.values()) + " |")
    kinds = [q for q in QTYPES if any(q in v for v in out["heldout"].values())] + ["all"]
    print("\n| model | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
    for stage, acc in out["heldout"].items():
        print(f"| {stage} | " + " | ".join(fmt(acc.get(q)) for q in kinds) + " |")
    print("\n| kind | kept accuracy | mean candidate | kept / scored |\n|---|---|---|---|")
    for qtype, q in out["curation"].items():
        print(f"| {qtype} | {fmt(q['kept_accuracy'])} | {fmt(q['mean_candidate_accuracy'])} | {q['kept']} / {q['total']} |")
    print(f"\noracle VQA labels agreeing with truth: {fmt(out['oracle_agrees_with_truth'])}")


if __name__ == "__main__":
    main()
