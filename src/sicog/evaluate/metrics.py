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

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# "The answer is", "answer:", "So, the final answer is:" ... at the start of the answer.
_ANSWER_PREFIX = re.compile(r"^\s*(?:so\s*,?\s*)?(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is\b|:)\s*:?\s*")
# Punctuation becomes a space, except a decimal point between digits (3.5 stays 3.5).
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def normalize_answer(text: str) -> str:
    """Canonical form of a short answer, for exact match.

    Steps, in order: lowercase; drop a leading "the answer is" / "answer:" / "so, the final answer
    is" prefix; punctuation (and underscores) to spaces, except a decimal point between digits;
    number words zero..ten to digits; articles (a, an, the) dropped unless they are the whole answer
    (so a multiple-choice "A" survives); whitespace collapsed. "The answer is: Three." -> "3".
    """
    text = _ANSWER_PREFIX.sub("", str(text).lower())
    words = [_NUMBER_WORDS.get(w, w) for w in _PUNCTUATION.sub(" ", text).split()]
    content = [w for w in words if w not in _ARTICLES]
    return " ".join(content or words)


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
        points.append({
            "threshold": threshold,
            "keep_rate": round(len(passing) / len(best_q), 4) if best_q else None,
            "precision": _mean(passing),
        })
    return {
        f"kept_{name}": _mean([q for _, k, q in best_q if k]),
        f"selected_{name}": _mean([q for _, _, q in best_q]),
        f"mean_candidate_{name}": _mean(all_q),
        "kept": kept,
        "total": total,
        "judged": len(best_q),
        "sweep": points,
    }
