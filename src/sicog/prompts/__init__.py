"""Prompt texts and the answer formats of SICOG: DD, CoD (5 steps), DA, structured CoT (4 steps).

Each format has a builder and a strict parser (`format_*` / `parse_*`), kept apart from the steps
that use them. `compared_text` says what self-consistency compares for each format (paper
Sec. 3.3: CoD step 5, CoT step 4, the whole text otherwise); `final_answer` what a task is judged
on, and `normalize_answer` the canonical form of a short answer that exact match compares.
"""

from __future__ import annotations

# The submodules never import this package (it imports them): FormatError lives in prompts.steps.
from sicog.prompts.answers import normalize_answer
from sicog.prompts.cod import cod_conversation, format_cod, parse_cod
from sicog.prompts.cot import (
    convert_llava_cot_items,
    convert_llava_cot_record,
    cot_question,
    da_question,
    format_cot,
    llava_cot_steps,
    parse_cot,
    steps_to_llava_cot,
)
from sicog.prompts.steps import FormatError
from sicog.prompts.texts import (
    CAPTION_COD,
    CAPTION_DD,
    COD_HEADERS,
    COD_PARAPHRASES,
    COD_TURN_QUESTIONS,
    COT_HEADERS,
    COT_SUFFIX,
    DD_PARAPHRASES,
    SHORT_SUFFIX,
    all_prompt_texts,
)

FORMATS = ("dd", "cod", "da", "cot", "text")


def compared_text(fmt: str, text: str) -> str:
    """The part of a candidate that self-consistency embeds: CoD step 5, CoT step 4, else the whole text.

    FormatError for a malformed CoD/CoT candidate (the caller counts and reports it).
    """
    if fmt == "cod":
        return parse_cod(text)[4]
    if fmt == "cot":
        return parse_cot(text)[3]
    if fmt in FORMATS:
        return text.strip()
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def final_answer(fmt: str, text: str) -> str:
    """The answer a task is judged on: the CoT step-4 conclusion, otherwise the whole text (stripped).

    FormatError for a malformed CoT answer.
    """
    if fmt == "cot":
        return parse_cot(text)[3]
    if fmt in FORMATS:
        return text.strip()
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


__all__ = [
    "CAPTION_COD",
    "CAPTION_DD",
    "COD_HEADERS",
    "COD_PARAPHRASES",
    "COD_TURN_QUESTIONS",
    "COT_HEADERS",
    "COT_SUFFIX",
    "DD_PARAPHRASES",
    "FORMATS",
    "SHORT_SUFFIX",
    "FormatError",
    "all_prompt_texts",
    "cod_conversation",
    "compared_text",
    "convert_llava_cot_items",
    "convert_llava_cot_record",
    "cot_question",
    "da_question",
    "final_answer",
    "format_cod",
    "format_cot",
    "llava_cot_steps",
    "normalize_answer",
    "parse_cod",
    "parse_cot",
    "steps_to_llava_cot",
]
