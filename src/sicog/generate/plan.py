"""Candidate plans: which prompts each source record is sampled with (SICOG step 2).

Paper Sec. 3.2: per image 2 CoD + 1 DD captions, per image-question 2 CoT + 1 DA answers, per
text-only prompt 3 answers from the backbone LLM. A plan turns records into one request per
candidate; each request carries its record id, candidate index and seed so that every later step
joins on ids, never on positions.

Input: validated source records (`sicog.records`). Output: requests
`{"id", "task", "format", "index", "seed", "prompt", "image"?, "system"?}`; `prompt` is the user text
without the `<image>` marker (the sampler adds it for image requests); `system` is the record's
system prompt, which the samplers send as a system message before the prompt.
"""

from __future__ import annotations

from typing import Literal

from sicog.errors import UserError
from sicog.generate.seeds import candidate_seed
from sicog.prompts import CAPTION_COD, CAPTION_DD, cot_question, da_question
from sicog.records import question_of

Task = Literal["caption", "vqa", "text"]

# Index order of the formats inside an instance; fixed here (not taken from the plan's key order)
# so that a YAML file listing {"dd": 1, "cod": 2} gives the same indices and seeds.
FORMAT_ORDER: dict[str, tuple[str, ...]] = {"caption": ("cod", "dd"), "vqa": ("cot", "da"), "text": ("text",)}


def _prompt(task: str, fmt: str, rec: dict) -> str:
    if task == "caption":
        return CAPTION_COD if fmt == "cod" else CAPTION_DD
    if task == "vqa":
        q = question_of(rec)
        return cot_question(q) if fmt == "cot" else da_question(q)
    return question_of(rec)


def _counts(task: str, plan: dict[str, int] | int) -> list[tuple[str, int]]:
    if task not in FORMAT_ORDER:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(FORMAT_ORDER)}")
    if task == "text":
        if isinstance(plan, dict):
            plan = plan.get("text", 0)
        if not isinstance(plan, int) or plan < 0:
            raise UserError(f"text plan must be a non-negative candidate count, got {plan!r}")
        return [("text", plan)]
    if not isinstance(plan, dict):
        raise UserError(f"{task} plan must map formats to counts, e.g. {{'{FORMAT_ORDER[task][0]}': 2}}")
    unknown = set(plan) - set(FORMAT_ORDER[task])
    if unknown:
        raise UserError(f"unknown {task} formats {sorted(unknown)}; valid: {', '.join(FORMAT_ORDER[task])}")
    counts = [(fmt, int(plan.get(fmt, 0))) for fmt in FORMAT_ORDER[task]]
    if any(n < 0 for _, n in counts):
        raise UserError(f"{task} plan counts must be >= 0, got {plan}")
    return counts


def plan_requests(records: list[dict], task: Task, plan: dict[str, int] | int, cycle_seed: int) -> list[dict]:
    """One request per planned candidate, indices 0.. in FORMAT_ORDER (caption: CoD first, then DD)."""
    counts = _counts(task, plan)
    requests: list[dict] = []
    for rec in records:
        rid = str(rec["id"])
        if task != "text" and not rec.get("image"):
            raise UserError(f"record {rid}: a {task} request needs an image")
        index = 0
        for fmt, n in counts:
            for _ in range(n):
                req = {
                    "id": rid,
                    "task": task,
                    "format": fmt,
                    "index": index,
                    "seed": candidate_seed(cycle_seed, rid, index),
                    "prompt": _prompt(task, fmt, rec),
                }
                if task != "text":
                    req["image"] = rec["image"]
                if rec.get("system"):
                    req["system"] = rec["system"]
                requests.append(req)
                index += 1
    return requests
