"""SICOG step 3: score candidates by self-consistency, keep the best, write curated records.

Input: candidate rows `{"id", "task", "format", "index", "seed", "prompt", "image"?, "text",
"model"}`, several per instance (one instance = all candidates of one id).
Output: one scored row per instance, kept/rejected decisions with reasons, and LLaVA training
records with `sicog` provenance.
References: paper Sec. 3.3. What is compared: CoD step 5, CoT step 4, the whole text otherwise; the
kept sample is the full winning candidate. CoD winners above a second threshold also become 5-turn
conversations. Text-only: top-K by score.

Similarity, per task:
- "embedding" (the paper's): mean cosine similarity of sentence embeddings to the other candidates;
- "exact": share of the other candidates whose normalised answer is identical;
- "hybrid": exact for instances whose normalised compared texts all have at most
  `short_answer_words` words, embedding otherwise (sentence embeddings rate most one-word answers
  as near-identical, so for them only exact match separates agreement from disagreement).
Malformed candidates (a CoD/CoT text that does not parse, or an empty text) are not scored; they
are listed by index with their errors, and an instance left with fewer than 2 well-formed
candidates is rejected with its reason. Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sicog.curate.consistency import best_in_groups, consistency_scores, exact_scores
from sicog.evaluate.metrics import normalize_answer
from sicog.prompts import FormatError, cod_conversation, compared_text, parse_cod
from sicog.records import IMAGE_TOKEN

SIMILARITIES = ("embedding", "exact", "hybrid")
_REQUIRED = ("id", "task", "format", "index", "text")


def _group(candidates: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """Candidates by id (first-seen order of ids), each list sorted by candidate index."""
    groups: dict[str, list[Mapping]] = {}
    for n, cand in enumerate(candidates):
        missing = [key for key in _REQUIRED if key not in cand]
        if missing:
            raise ValueError(f"candidate row {n} lacks {', '.join(missing)} (id {cand.get('id')!r})")
        groups.setdefault(str(cand["id"]), []).append(cand)
    for rows in groups.values():
        rows.sort(key=lambda c: c["index"])
    return groups


def _compared(cand: Mapping) -> str:
    """The compared text of one candidate, FormatError if malformed or empty."""
    if not isinstance(cand["text"], str):
        raise FormatError(f"text is {type(cand['text']).__name__}, not a string")
    text = compared_text(cand["format"], cand["text"])
    if not text.strip():
        raise FormatError("empty text")
    return text


def _rejected(iid: str, task: str, reason: str, scores: list, best=None, score=None, **extra) -> dict:
    return {"id": iid, "task": task, "reason": reason, "scores": scores, "best": best, "score": score, **extra}


def score_instances(
    candidates: Sequence[Mapping],
    similarity: str,
    embedder=None,
    short_answer_words: int = 3,
) -> tuple[list[dict], list[dict]]:
    """(scored rows, rejected rows) for a batch of candidates of one task.

    Scored row: {"id", "task", "candidates" (full rows, index order), "compared" (text or None per
    candidate), "scores" (float or None per candidate), "best" (the winner's `index`), "score" (its
    score), "similarity" (the one used for this instance: "embedding" or "exact"), "malformed"
    (indices), "format_errors" (their messages)}. Rejected row: {"id", "task", "reason", "scores",
    "best": None, "score": None, "malformed", "format_errors"}.
    All embedding-scored texts of the batch go through one `embedder.encode` call and all scores
    are computed in one vectorised pass per similarity.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; valid: {', '.join(SIMILARITIES)}")
    scored: list[dict] = []
    rejected: list[dict] = []
    # Per similarity actually used: the scored rows, their well-formed positions, and the texts.
    pending: dict[str, tuple[list[dict], list[list[int]], list[str]]] = {"embedding": ([], [], []), "exact": ([], [], [])}
    for iid, cands in _group(candidates).items():
        task = cands[0]["task"]
        compared: list[str | None] = []
        malformed: list[int] = []
        errors: list[str] = []
        for cand in cands:
            try:
                compared.append(_compared(cand))
            except ValueError as exc:  # a FormatError, or an unknown format
                compared.append(None)
                malformed.append(cand["index"])
                errors.append(str(exc))
        indices = [c["index"] for c in cands]
        none = [None] * len(cands)
        extra = {"malformed": malformed, "format_errors": errors}
        if len({c["task"] for c in cands}) > 1:
            rejected.append(_rejected(iid, task, "candidates of this id disagree on the task", none, **extra))
            continue
        if len(set(indices)) < len(indices):
            rejected.append(_rejected(iid, task, f"duplicate candidate indices {indices}", none, **extra))
            continue
        ok = [i for i, text in enumerate(compared) if text is not None]
        if len(ok) < 2:
            reason = f"only {len(ok)} well-formed candidate(s) of {len(cands)}; self-consistency needs at least 2"
            rejected.append(_rejected(iid, task, reason, none, **extra))
            continue
        keys = [normalize_answer(compared[i]) for i in ok] if similarity != "embedding" else []
        use = similarity
        if similarity == "hybrid":
            use = "exact" if all(len(k.split()) <= short_answer_words for k in keys) else "embedding"
        row = {"id": iid, "task": task, "candidates": [dict(c) for c in cands], "compared": compared,
               "scores": none, "best": None, "score": None, "similarity": use, **extra}
        rows, positions, texts = pending[use]
        rows.append(row)
        positions.append(ok)
        texts.extend(keys if use == "exact" else [compared[i] for i in ok])
        scored.append(row)

    for use, (rows, positions, texts) in pending.items():
        if not rows:
            continue
        sizes = np.array([len(p) for p in positions], dtype=np.int64)
        if use == "exact":
            flat = exact_scores(texts, sizes)
        else:
            if embedder is None:
                raise ValueError(f"similarity {similarity!r} needs an embedder for {len(rows)} instance(s)")
            flat = consistency_scores(embedder.encode(texts), sizes)
        best = best_in_groups(flat, sizes)
        for row, ok, values, b in zip(rows, positions, np.split(flat, np.cumsum(sizes)[:-1]), best):
            scores: list[float | None] = [None] * len(row["candidates"])
            for i, v in zip(ok, values):
                scores[i] = float(v)
            row["scores"] = scores
            row["best"] = row["candidates"][ok[int(b)]]["index"]
            row["score"] = float(values[int(b)])
    return scored, rejected


def select_instances(rows: list[dict], task: str, threshold: float, top_k: int | None = None) -> tuple[list[dict], list[dict]]:
    """(kept rows, rejected rows); sets row["kept"] on every row.

    An instance is kept when its best score reaches `threshold`. With `top_k` (the config gives it
    for text-only: the paper keeps the top 50k), only the top_k passing instances by score are kept,
    ties broken by id so that the choice is deterministic.
    """
    for row in rows:
        if row["task"] != task:
            raise ValueError(f"row {row['id']!r} is task {row['task']!r}, not {task!r}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    reasons: dict[int, str] = {}
    passing = []
    for n, row in enumerate(rows):
        if row["score"] >= threshold:
            passing.append(n)
        else:
            reasons[n] = f"best score {row['score']:.4f} < threshold {threshold:g}"
    if top_k is not None and len(passing) > top_k:
        ranked = sorted(passing, key=lambda n: (-rows[n]["score"], rows[n]["id"]))
        for rank, n in enumerate(ranked[top_k:], start=top_k + 1):
            reasons[n] = f"not in top-K (rank {rank} of {len(ranked)} passing, K={top_k})"
    kept, rejected = [], []
    for n, row in enumerate(rows):
        row["kept"] = n not in reasons
        if row["kept"]:
            kept.append(row)
        else:
            rejected.append(_rejected(row["id"], task, reasons[n], row["scores"], row["best"], row["score"]))
    return kept, rejected


def _human(prompt: str, image: bool) -> str:
    if not image or IMAGE_TOKEN in prompt:
        return prompt
    return f"{IMAGE_TOKEN}\n{prompt}"


def to_curated(kept_rows: Sequence[Mapping], cycle: int, conversation_threshold: float) -> list[dict]:
    """LLaVA training records of the winners, with `sicog` provenance.

    Each row gives {"id", "image"?, "conversations": [human prompt (with `<image>\\n` for image
    tasks), gpt full winning text], "sicog": {"cycle", "task", "format", "index", "seed", "score",
    "scores", "model", "conversation"}}. A CoD winner whose score reaches `conversation_threshold`
    also gives `<id>-conv`: its five steps as five human/gpt turns. A row whose score is None (an
    unscored pick, as in the uncurated ablation) never becomes a conversation.
    """
    records = []
    for row in kept_rows:
        winner = next((c for c in row["candidates"] if c["index"] == row["best"]), None)
        if winner is None:
            raise ValueError(f"instance {row['id']!r}: best index {row['best']!r} is not one of its candidates")
        image = winner.get("image")
        provenance = {
            "cycle": cycle, "task": row["task"], "format": winner["format"], "index": winner["index"],
            "seed": winner.get("seed"), "score": row["score"], "scores": row["scores"], "model": winner.get("model"),
        }
        base = {"id": row["id"], **({"image": image} if image else {})}
        records.append({
            **base,
            "conversations": [
                {"from": "human", "value": _human(winner["prompt"], bool(image))},
                {"from": "gpt", "value": winner["text"]},
            ],
            "sicog": {**provenance, "conversation": False},
        })
        if winner["format"] == "cod" and row["score"] is not None and row["score"] >= conversation_threshold:
            records.append({
                **base,
                "id": f"{row['id']}-conv",
                "conversations": cod_conversation(parse_cod(winner["text"])),
                "sicog": {**provenance, "conversation": True},
            })
    return records
