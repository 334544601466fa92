"""Held-out evaluation: what a model answers and describes on images it never saw.

VQA uses the direct-answer prompt (the question alone) and exact match on the normalised answer;
captions use the canonical DD prompt and are scored by attribute recall against the scene ground
truth. Decoding is greedy so that the comparison between models carries no sampling noise.
"""

from __future__ import annotations

from pathlib import Path

from sicog.config import EvalConfig
from sicog.evaluate.metrics import caption_attribute_recall, vqa_correct
from sicog.prompts import CAPTION_DD, da_question
from sicog.records import IMAGE_TOKEN, write_jsonl


def heldout_row(row: dict) -> dict:
    """A held-out row as {"id", "task", "question"?, "answer"?, "image"?, "scene"?}: the demo world's
    rows as they are; a user's LLaVA record (human question, gpt reference answer) as a VQA row,
    scored by exact match of the normalised answer (captions need a scene to be scored)."""
    if "task" in row or "conversations" not in row:
        return row
    turns = row["conversations"]
    question = next((t["value"] for t in turns if t.get("from") == "human"), "")
    answer = next((t["value"] for t in turns if t.get("from") == "gpt"), "")
    return {
        "id": row["id"],
        "task": "vqa",
        "question": question.replace(IMAGE_TOKEN, "").strip(),
        "answer": answer,
        **({"image": row["image"]} if row.get("image") else {}),
    }


def heldout_requests(rows: list[dict]) -> list[dict]:
    """One greedy request per held-out row, in the sampler's request format."""
    requests = []
    for row in rows:
        vqa = row["task"] == "vqa"
        requests.append(
            {
                "id": row["id"],
                "task": row["task"],
                "format": "da" if vqa else "dd",
                "index": 0,
                "seed": 0,
                "prompt": da_question(row["question"]) if vqa else CAPTION_DD,
                **({"image": row["image"]} if row.get("image") else {}),
            }
        )
    return requests


def evaluate_heldout(model_dir: Path, rows: list[dict], image_root: Path | None, predictions_path: Path, cfg: EvalConfig, progress=None) -> dict:
    """{"vqa_accuracy", "caption_attribute_recall", "vqa_n", "caption_n", "errors"}; predictions written.

    `rows`: the catalog's heldout role (see heldout_row); images are absolute URIs, or paths under
    `image_root`."""
    from sicog.generate.local import LocalSampler

    rows = {row["id"]: row for row in map(heldout_row, rows)}
    sampler = LocalSampler(model_dir, image_root, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
    predictions = list(sampler.generate(heldout_requests(list(rows.values())), greedy=True, progress=progress))
    vqa, captions, errors = [], [], 0
    for pred in predictions:
        row = rows[pred["id"]]
        if pred.get("text") is None:  # unreadable held-out image: counted, scored as wrong
            errors += 1
        if row["task"] == "vqa":
            pred["correct"] = pred.get("text") is not None and vqa_correct(pred["text"], row["answer"])
            vqa.append(pred["correct"])
        elif "scene" in row:
            pred["attribute_recall"] = caption_attribute_recall(pred.get("text") or "", row["scene"])
            captions.append(pred["attribute_recall"])
    write_jsonl(predictions_path, predictions)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"vqa_accuracy": mean(vqa), "caption_attribute_recall": mean(captions), "vqa_n": len(vqa), "caption_n": len(captions), "errors": errors}
