"""SICOG step 3: score candidates by self-consistency, keep the best, write curated records.

Input: candidate rows `{"id", "task", "format", "index", "seed", "prompt", "image"?, "text",
"model"}`, several per instance (one instance = all candidates of one id).
Output: one scored row per instance, kept/rejected decisions with reasons, and LLaVA training
records with `sicog` provenance.
References: paper Sec. 3.3. What is compared: CoD step 5, CoT step 4, the whole text otherwise; the
kept sample is the full winning candidate. A CoD winner whose score reaches a second, higher
threshold is converted to the paper's 5-turn conversation (one human/gpt turn per CoD step) in place
of its single-turn record. Text-only: the task's threshold first, then the top-K by score (the
paper: 50k), the others rejected with their reason.

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
from sicog.errors import UserError
from sicog.prompts import FormatError, cod_conversation, compared_text, parse_cod
from sicog.prompts.answers import normalize_answer
from sicog.records import IMAGE_TOKEN, Candidate, CuratedRecord, Provenance, ScoredRow

SIMILARITIES = ("embedding", "exact", "hybrid")


def _group(candidates: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """Candidates by id (first-seen order of ids), each list sorted by candidate index."""
    groups: dict[str, list[Mapping]] = {}
    for n, cand in enumerate(candidates):
        try:
            Candidate.from_row(cand)  # the candidates contract, checked where step 3 reads it
        except ValueError as exc:  # the contract's own check says what is missing
            raise UserError(f"candidate row {n}: {exc}") from None
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

    Scored row (`sicog.records.ScoredRow`): {"id", "task", "candidates" (full rows, index order),
    "compared" (text or None per candidate), "scores" (float or None per candidate), "best" (the
    winner's `index`), "score" (its score), "similarity" (the one used for this instance:
    "embedding" or "exact"), "malformed" (indices), "format_errors" (their messages), "kept" (None
    until `select_instances`)}. Rejected row: {"id", "task", "reason", "scores",
    "best": None, "score": None, "malformed", "format_errors"}.
    All embedding-scored texts of the batch go through one `embedder.encode` call and all scores
    are computed in one vectorised pass per similarity.
    """
    if similarity not in SIMILARITIES:
        raise UserError(f"unknown similarity {similarity!r}; valid: {', '.join(SIMILARITIES)}")
    scored: list[ScoredRow] = []
    rejected: list[dict] = []
    # Per similarity actually used: the scored rows, their well-formed positions, and the texts.
    pending: dict[str, tuple[list[ScoredRow], list[list[int]], list[str]]] = {"embedding": ([], [], []), "exact": ([], [], [])}
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
        row = ScoredRow(id=iid, task=task, candidates=[dict(c) for c in cands], compared=compared, scores=none, best=None, score=None, similarity=use, **extra)
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
            scores: list[float | None] = [None] * len(row.candidates)
            for i, v in zip(ok, values):
                scores[i] = float(v)
            row.scores = scores
            row.best = row.candidates[ok[int(b)]]["index"]
            row.score = float(values[int(b)])
    return [row.to_row() for row in scored], rejected


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
    """LLaVA training records of the winners, one per instance, with `sicog` provenance.

    A record is {"id", "image"?, "system"?, "conversations", "sicog": {"cycle", "task", "format", "index",
    "seed", "score", "scores", "model", "conversation"}} (`sicog.records.CuratedRecord`); `system` is
    the system prompt the winner was sampled under, if any. Its
    conversation is the human prompt (with `<image>\\n` for image tasks) and the full winning text,
    except for a CoD winner whose score reaches `conversation_threshold`: that one is converted to
    its five steps as five human/gpt turns (paper Sec. 3.3: high-consistency CoD captions become
    multi-turn conversations), replacing the single-turn record, and says `"conversation": true`.
    A row whose score is None (an unscored pick, as in the uncurated ablation) is never converted.
    """
    records = []
    for row in kept_rows:
        winner = next((c for c in row["candidates"] if c["index"] == row["best"]), None)
        if winner is None:
            raise UserError(f"instance {row['id']!r}: best index {row['best']!r} is not one of its candidates")
        image = winner.get("image")
        convert = winner["format"] == "cod" and row["score"] is not None and row["score"] >= conversation_threshold
        if convert:
            conversations = cod_conversation(parse_cod(winner["text"]))
        else:
            conversations = [{"from": "human", "value": _human(winner["prompt"], bool(image))}, {"from": "gpt", "value": winner["text"]}]
        provenance = Provenance(
            cycle=cycle,
            task=row["task"],
            format=winner["format"],
            index=winner["index"],
            seed=winner.get("seed"),
            score=row["score"],
            scores=row["scores"],
            model=winner.get("model"),
            conversation=convert,
        )
        records.append(CuratedRecord(id=row["id"], conversations=conversations, sicog=provenance, image=image, system=winner.get("system")).to_row())
    return records
