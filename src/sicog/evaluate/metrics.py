"""Ground-truth measures: answer normalisation, VQA exact match, caption attribute recall, and how
well self-consistency curation picks correct pseudo-labels.

The demo world knows the truth of every image, so curation can be judged directly: are the kept
pseudo-labels more accurate than the best candidate before the threshold, and than a candidate
picked at random (the mean candidate)? That is the paper's premise (Sec. 3.3), measured instead of
assumed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from sicog.prompts import compared_text, final_answer
from sicog.prompts.answers import normalize_answer  # shared with curation; importable from here too

__all__ = ["caption_attribute_recall", "curation_quality", "normalize_answer", "vqa_correct"]


def vqa_correct(pred_text: str, answer: object) -> bool:
    """Exact match of the normalised prediction and the normalised ground-truth answer."""
    expected = normalize_answer(str(answer))
    return bool(expected) and normalize_answer(pred_text) == expected


def _words(text: object) -> str:
    return r"\s+".join(re.escape(w) for w in str(text).replace("_", " ").lower().split())


def caption_attribute_recall(caption: str, scene: Mapping) -> float:
    """Share of the scene's objects whose colour and shape the caption names together.

    An object counts when the caption contains "<color> <shape>" (plural allowed, case ignored,
    the object's own size word allowed between them: "red large circle"); a size word before the
    colour needs no rule ("large red circle" contains "red circle"). Naming the colour and the
    shape apart ("a circle ... something red") does not count: the pairing is the attribute.
    Two identical objects are both counted by one mention.
    """
    objects = scene.get("objects") or []
    if not objects:
        raise ValueError("scene has no objects: attribute recall is undefined")
    text = str(caption).lower()
    named = 0
    for obj in objects:
        size = rf"(?:{_words(obj['size'])}\s+)?" if obj.get("size") else ""
        pattern = rf"\b{_words(obj['color'])}\s+{size}{_words(obj['shape'])}(?:s|es)?\b"
        named += re.search(pattern, text) is not None
    return named / len(objects)


# --- curation quality -----------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _candidate(row: Mapping, index: int) -> Mapping:
    return next(c for c in row["candidates"] if c["index"] == index)


def _quality(task: str, candidate: Mapping, truth: Mapping) -> float:
    """1/0 correctness (vqa) or attribute recall (caption) of one well-formed candidate."""
    if task == "vqa":
        return float(vqa_correct(final_answer(candidate["format"], candidate["text"]), truth["answer"]))
    return caption_attribute_recall(compared_text(candidate["format"], candidate["text"]), truth["scene"])


def curation_quality(rows: Sequence[Mapping], truth: Mapping[str, Mapping], task: str, sweep: Sequence[float]) -> dict:
    """How good the curated pseudo-labels are, against ground truth.

    `rows` are scored rows of one task with `kept` set (see sicog.curate.select); `truth` maps an
    id to {"answer"} (vqa) or {"scene"} (caption). Returns, with <q> = accuracy (vqa) or
    attribute_recall (caption):
    - kept_<q>: of the best candidate of the kept instances;
    - selected_<q>: of the best candidate of every scored instance (selection without threshold);
    - mean_candidate_<q>: over every well-formed candidate (what a random pick would give);
    - kept, total: instance counts (total = scored instances; instances that could not be scored
      are counted by the score step's rejected file);
    - judged: instances with ground truth (the others are left out of every <q>);
    - sweep: [{"threshold", "keep_rate", "precision"}]: at each threshold, the share of instances
      whose best score reaches it and the mean <q> of their best candidates.
    A mean over nothing is None. Task "text" has no ground truth: only kept and total.
    """
    if task not in ("vqa", "caption", "text"):
        raise ValueError(f"unknown task {task!r}; valid: vqa, caption, text")
    total = len(rows)
    kept = sum(1 for r in rows if r.get("kept"))
    if task == "text":
        return {"kept": kept, "total": total}
    name = "accuracy" if task == "vqa" else "attribute_recall"
    need = "answer" if task == "vqa" else "scene"
    best_q: list[tuple[float, bool, float]] = []  # (best score, kept, quality of best) per judged row
    all_q: list[float] = []
    for row in rows:
        gt = truth.get(row["id"])
        if gt is None or gt.get(need) is None:
            continue
        # A candidate with a score was well-formed when scored, so its final answer parses.
        all_q += [_quality(task, cand, gt) for cand, score in zip(row["candidates"], row["scores"]) if score is not None]
        best_q.append((row["score"], bool(row.get("kept")), _quality(task, _candidate(row, row["best"]), gt)))
    points = []
    for threshold in sweep:
        passing = [q for score, _, q in best_q if score >= threshold]
        points.append(
            {
                "threshold": threshold,
                "keep_rate": round(len(passing) / len(best_q), 4) if best_q else None,
                "precision": _mean(passing),
            }
        )
    return {
        f"kept_{name}": _mean([q for _, k, q in best_q if k]),
        f"selected_{name}": _mean([q for _, _, q in best_q]),
        f"mean_candidate_{name}": _mean(all_q),
        "kept": kept,
        "total": total,
        "judged": len(best_q),
        "sweep": points,
    }
