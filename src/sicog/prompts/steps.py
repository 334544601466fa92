"""The `Step k: <header>\\n<text>` layout shared by CoD (5 steps) and structured CoT (4 steps).

One builder and one strict parser serve both formats so that they cannot drift apart. The parser
is strict about what carries meaning (the number of steps, their order, the exact headers, non-empty
texts) and lenient only about whitespace between steps, because sampled text often differs there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class FormatError(ValueError):
    """A text that does not follow its format (wrong step count, header, missing tag, ...).

    A ValueError, not a sicog.errors.UserError: it describes one sampled or source text, and its
    callers turn it into a quarantine or rejection row (the package re-exports it as
    sicog.prompts.FormatError)."""


# A step header line: "Step 3: <header>" on a line of its own (surrounding spaces tolerated).
_STEP_LINE = re.compile(r"^[ \t]*Step (\d+): (.*?)[ \t]*$", re.MULTILINE)


def format_steps(steps: Sequence[str], headers: Sequence[str], name: str) -> str:
    """`Step k: <header>\\n<text>` blocks separated by a blank line; texts are stripped.

    Refuses a wrong step count, an empty text, or a text that itself contains a step header line
    (it would not parse back to the same steps).
    """
    if isinstance(steps, str) or len(steps) != len(headers):
        raise FormatError(f"{name} needs exactly {len(headers)} steps, got {_count(steps)}")
    blocks = []
    for k, (header, text) in enumerate(zip(headers, steps), start=1):
        if not isinstance(text, str) or not text.strip():
            raise FormatError(f"{name} step {k} is empty")
        if _STEP_LINE.search(text):
            raise FormatError(f"{name} step {k} contains a step header line")
        blocks.append(f"Step {k}: {header}\n{text.strip()}")
    return "\n\n".join(blocks)


def parse_steps(text: str, headers: Sequence[str], name: str) -> list[str]:
    """The step texts of a well-formed answer, or FormatError saying what is wrong."""
    if not isinstance(text, str):
        raise FormatError(f"{name} answer is not a string")
    found = list(_STEP_LINE.finditer(text))
    if len(found) != len(headers):
        raise FormatError(f"{name} needs exactly {len(headers)} steps, found {len(found)}")
    if text[: found[0].start()].strip():
        raise FormatError(f"{name} has text before step 1")
    steps = []
    for k, match in enumerate(found, start=1):
        if int(match.group(1)) != k:
            raise FormatError(f"{name} step {k} is numbered {match.group(1)}")
        if match.group(2) != headers[k - 1]:
            raise FormatError(f"{name} step {k} has the wrong header: {match.group(2)[:80]!r}")
        end = found[k].start() if k < len(found) else len(text)
        body = text[match.end() : end].strip()
        if not body:
            raise FormatError(f"{name} step {k} is empty")
        steps.append(body)
    return steps


def _count(steps: object) -> str:
    try:
        return str(len(steps))  # type: ignore[arg-type]
    except TypeError:
        return type(steps).__name__
