"""Structured chain-of-thought (CoT) answers and the LLaVA-CoT conversion.

References: paper Sec. 3.1 (four-step CoT) and the reference conversion script, which replaces the
`<SUMMARY>/<CAPTION>/<REASONING>/<CONCLUSION>` tags with step headers, turns the short-answer
suffix into `Answer the question step-by-step.`, and writes a direct-answer (DA) twin holding only
the conclusion. That script edits shared records in place, so both of its outputs end up with the
long form; `convert_llava_cot_record` builds two new records and never touches its input.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence

from sicog.prompts.steps import FormatError, format_steps, parse_steps
from sicog.prompts.texts import COT_HEADERS, COT_SUFFIX, LLAVA_COT_TAGS, SHORT_SUFFIX


def format_cot(steps: Sequence[str]) -> str:
    """Four step texts -> `Step k: <header>\\n<text>` blocks; parse_cot(format_cot(s)) == s."""
    return format_steps(steps, COT_HEADERS, "CoT")


def parse_cot(text: str) -> list[str]:
    """The four step texts of a CoT answer; FormatError unless exactly 4 steps with the exact headers."""
    return parse_steps(text, COT_HEADERS, "CoT")


def llava_cot_steps(tagged: str) -> list[str]:
    """SUMMARY, CAPTION, REASONING, CONCLUSION texts (stripped) of a LLaVA-CoT answer."""
    steps = []
    for tag in LLAVA_COT_TAGS:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", tagged, flags=re.DOTALL)
        if len(found) != 1:
            raise FormatError(f"LLaVA-CoT answer has {len(found)} <{tag}> sections, expected 1")
        if not found[0].strip():
            raise FormatError(f"LLaVA-CoT <{tag}> section is empty")
        steps.append(found[0].strip())
    return steps


def steps_to_llava_cot(steps: Sequence[str]) -> str:
    """Inverse of llava_cot_steps, in LLaVA-CoT's own layout (`<TAG> text </TAG>`, blank-line separated)."""
    if isinstance(steps, str) or len(steps) != len(LLAVA_COT_TAGS):
        raise FormatError(f"LLaVA-CoT needs exactly {len(LLAVA_COT_TAGS)} steps")
    parts = []
    for tag, text in zip(LLAVA_COT_TAGS, steps):
        if not text.strip():
            raise FormatError(f"LLaVA-CoT <{tag}> section is empty")
        if any(f"<{t}>" in text or f"</{t}>" in text for t in LLAVA_COT_TAGS):
            raise FormatError(f"LLaVA-CoT <{tag}> text contains a tag")
        parts.append(f"<{tag}> {text.strip()} </{tag}>")
    return "\n\n".join(parts)


def _remove(question: str, suffix: str) -> str:
    # The suffix goes together with the whitespace before it ("...?\nAnswer the question ...").
    return re.sub(r"\s*" + re.escape(suffix), "", question).strip()


def cot_question(question: str) -> str:
    """The CoT prompt: the question without the short-answer suffix, plus ` Answer the question step-by-step.`"""
    base = _remove(_remove(question, SHORT_SUFFIX), COT_SUFFIX)
    return f"{base} {COT_SUFFIX}"


def da_question(question: str) -> str:
    """The DA prompt: the original question with any `Answer the question step-by-step.` removed."""
    return _remove(question, COT_SUFFIX)


def convert_llava_cot_record(rec: dict) -> tuple[dict, dict]:
    """One LLaVA-CoT record -> (DA record `<id>-da`, CoT record `<id>-cot`); the input is not modified.

    Every gpt turn is converted (multi-turn records keep their turn structure): the DA twin answers
    with the conclusion only, the CoT twin with the four-step answer; human turns get
    `da_question` / `cot_question`. FormatError if a gpt turn lacks one of the four tags.
    """
    if "id" not in rec or not isinstance(rec.get("conversations"), list):
        raise FormatError("LLaVA-CoT record needs an id and conversations")
    da = copy.deepcopy(rec)
    cot = copy.deepcopy(rec)
    da["id"] = f"{rec['id']}-da"
    cot["id"] = f"{rec['id']}-cot"
    for da_turn, cot_turn in zip(da["conversations"], cot["conversations"]):
        if da_turn["from"] == "gpt":
            steps = llava_cot_steps(da_turn["value"])
            da_turn["value"] = steps[3]
            cot_turn["value"] = format_cot(steps)
        else:
            da_turn["value"] = da_question(da_turn["value"])
            cot_turn["value"] = cot_question(cot_turn["value"])
    return da, cot


def convert_llava_cot_items(items: list[tuple[int, object]]) -> tuple[list[dict], list[dict]]:
    """(DA + CoT records, quarantine rows) for (line, LLaVA-CoT record) pairs, in input order.

    Each record goes through convert_llava_cot_record; one that cannot be converted (not an object,
    a duplicated id, a missing or duplicated tag, an empty section, no id) becomes a quarantine row
    `{"line", "id", "reason", "raw"}`. The records carry `meta` {task vqa, source_id, format da / cot}.
    Used by `sicog annotate cot` (sicog.annotate.cot) and by catalog sources of format llava-cot
    (sicog.data.dataset)."""
    out: list[dict] = []
    quarantine: list[dict] = []
    seen: set[str] = set()
    for line, rec in items:
        try:
            if not isinstance(rec, dict):
                raise FormatError("not a JSON object")
            if str(rec.get("id")) in seen:
                raise FormatError("duplicate id")
            da, cot = convert_llava_cot_record(rec)
        except FormatError as exc:
            rid = rec.get("id") if isinstance(rec, dict) else None
            quarantine.append({"line": line, "id": rid, "reason": str(exc), "raw": json.dumps(rec, ensure_ascii=False)[:2000]})
            continue
        seen.add(str(rec["id"]))
        meta = {"task": "vqa", "source_id": rec["id"]}
        da["meta"] = {**rec.get("meta", {}), **meta, "format": "da"}
        cot["meta"] = {**rec.get("meta", {}), **meta, "format": "cot"}
        out += [da, cot]
    return out, quarantine
