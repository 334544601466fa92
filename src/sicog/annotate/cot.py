"""Step-1 VQA data: LLaVA-CoT's tagged answers -> direct-answer (DA) and structured CoT records.

Paper Sec. 3.1: the reasoning model is warmed up on VQA data in two formats. LLaVA-CoT answers come
as `<SUMMARY>…</SUMMARY><CAPTION>…</CAPTION><REASONING>…</REASONING><CONCLUSION>…</CONCLUSION>`; the
CoT twin replaces the tags with the four `Step k: <header>` steps, the DA twin keeps only the
conclusion, and questions get `cot_question` / `da_question` (sicog-facts, "Structured CoT format").
Each record is converted on its own copies (the reference script's in-place mutation wrote the long
form into both outputs).

Input: LLaVA-CoT records (JSON array or JSONL). Output: `<id>-da` and `<id>-cot` records with
`meta.format` da / cot, and quarantine rows (reason + raw record) for records that cannot be
converted: a missing or duplicated tag, an empty section, no id.
"""

from __future__ import annotations

import json
from pathlib import Path

from sicog.errors import UserError
from sicog.prompts.cot import convert_llava_cot_items
from sicog.records import jsonl_lines

__all__ = ["annotate_cot", "read_llava_cot"]


def read_llava_cot(path: str | Path) -> tuple[list[tuple[int, object]], list[dict]]:
    """((line or array position, item) pairs, quarantine rows for malformed JSONL lines) of a JSON array
    or JSONL file; a malformed JSON array is a one-line UserError (nothing in it can be trusted)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text), start=1)), []
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: malformed JSON array ({exc.msg}, line {exc.lineno})") from None
    items, bad = [], []
    for line, raw in enumerate(jsonl_lines(text), start=1):
        if raw.strip():
            try:
                items.append((line, json.loads(raw)))
            except json.JSONDecodeError as exc:
                bad.append({"line": line, "reason": f"malformed JSON: {exc.msg}", "raw": raw[:2000]})
    return items, bad


def annotate_cot(items: list[tuple[int, object]]) -> tuple[list[dict], list[dict]]:
    """(DA + CoT records, quarantine rows) for (line, LLaVA-CoT record) pairs, in input order
    (sicog.prompts.cot.convert_llava_cot_items, which catalog sources of format llava-cot use too)."""
    return convert_llava_cot_items(items)
