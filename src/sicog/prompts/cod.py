"""Chain-of-Description (CoD) captions: build, parse, and turn into a five-turn conversation.

References: paper Sec. 3.1 (the five steps) and Sec. 3.3 (high-consistency CoD winners also become
multi-turn conversations, one step per turn).
"""

from __future__ import annotations

from collections.abc import Sequence

from sicog.prompts.steps import format_steps, parse_steps
from sicog.prompts.texts import COD_HEADERS, COD_TURN_QUESTIONS
from sicog.records import IMAGE_TOKEN


def format_cod(steps: Sequence[str]) -> str:
    """Five step texts -> `Step k: <header>\\n<text>` blocks; parse_cod(format_cod(s)) == s."""
    return format_steps(steps, COD_HEADERS, "CoD")


def parse_cod(text: str) -> list[str]:
    """The five step texts of a CoD caption; FormatError unless exactly 5 steps with the exact headers."""
    return parse_steps(text, COD_HEADERS, "CoD")


def cod_conversation(steps: Sequence[str]) -> list[dict]:
    """Five human/gpt turns, one per CoD step, asked with the paper's questions.

    The first human turn carries the image marker, as in any LLaVA record.
    """
    parse_cod(format_cod(steps))  # same validation as the single-turn form
    turns: list[dict] = []
    for k, (question, text) in enumerate(zip(COD_TURN_QUESTIONS, steps)):
        value = f"{IMAGE_TOKEN}\n{question}" if k == 0 else question
        turns.append({"from": "human", "value": value})
        turns.append({"from": "gpt", "value": text.strip()})
    return turns
