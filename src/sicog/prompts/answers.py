"""The canonical form of a short answer, shared by curation (exact-match self-consistency,
sicog.curate.select) and evaluation (VQA exact match, sicog.evaluate.metrics), so both compare
answers the same way."""

from __future__ import annotations

import re

_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
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
