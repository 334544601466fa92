"""Step-1 caption data: a strong teacher rewrites existing captions as Chain-of-Description (CoD).

Paper Sec. 3.1: the perception model is warmed up on a small set of images captioned in two formats,
detailed description (DD) and CoD (5 steps). Given LLaVA caption records (an image plus its original
caption), a teacher behind any OpenAI-compatible endpoint (TGI, vLLM, SGLang) writes the five steps
with the original caption as its reference; the DD record of the same image is the step-5 text
(sicog-facts: "The DD caption of the same image equals the step-5 text").

Input: LLaVA records `{"id", "image", "conversations": [human, gpt = the original caption]}`.
Output: `<id>-cod` and `<id>-dd` records (LLaVA format, `meta.format` = cod / dd, `meta.source_id`,
`meta.teacher`), ready to serve as a world's `annotated.jsonl`; and quarantine rows for records the
teacher could not annotate: an answer that does not parse into 5 well-formed steps is asked again
once with a fresh seed, then quarantined with both raw texts and the parse error; a request that
failed after its retries is quarantined with the server's reason.
"""

from __future__ import annotations

from sicog.errors import UserError
from sicog.generate.seeds import candidate_seed
from sicog.prompts import CAPTION_COD, CAPTION_DD, COD_HEADERS, FormatError, format_cod, parse_cod
from sicog.records import IMAGE_TOKEN

TEACHER_TEMPERATURE = 0.2  # paper's teacher setting for annotation

# The CoD instruction, in the spirit of the paper's (Sec. 3.1, appendix prompt): guidelines, the five
# steps with their exact headers (the parser and the trained model depend on them), short steps 1-4,
# a full step 5, and the original description as a reference that must not be contradicted.
COD_INSTRUCTION = """You are an expert at describing images. Describe the image step by step, using the original description below as a reference.

Guidelines:
- Coverage: capture every important element of the image, including its background and small details.
- No invented details: describe only what is visible in the image; do not guess or add content.
- Relevant context: mention context only where it helps to understand the scene.
- No inaccuracies: where the original description disagrees with the image, trust the image.

Write exactly five steps, each starting with its header line exactly as given, separated by a blank line:
Step 1: {h1}
(one or two sentences)

Step 2: {h2}
(one or two sentences)

Step 3: {h3}
(one or two sentences)

Step 4: {h4}
(one or two sentences)

Step 5: {h5}
(the full, detailed description in one or two paragraphs)

Write nothing before Step 1 and nothing after Step 5.

Original description:
{caption}"""


def teacher_prompt(caption: str) -> str:
    h = dict(zip(("h1", "h2", "h3", "h4", "h5"), COD_HEADERS))
    return COD_INSTRUCTION.format(**h, caption=caption.strip())


def original_caption(rec: dict) -> str:
    """The record's reference caption: its first non-empty gpt turn."""
    for turn in rec.get("conversations", []):
        if turn.get("from") == "gpt" and turn.get("value", "").strip():
            return turn["value"].strip()
    raise UserError(f"record {rec.get('id')}: no original caption (gpt turn)")


def cod_records(rec: dict, steps: list[str], teacher: str) -> list[dict]:
    """The CoD record and its DD twin (the step-5 text) for one source record."""
    meta = {"task": "caption", "source_id": rec["id"], "teacher": teacher}
    return [
        {
            "id": f"{rec['id']}-cod",
            "image": rec["image"],
            "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n{CAPTION_COD}"}, {"from": "gpt", "value": format_cod(steps)}],
            "meta": {**meta, "format": "cod"},
        },
        {
            "id": f"{rec['id']}-dd",
            "image": rec["image"],
            "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n{CAPTION_DD}"}, {"from": "gpt", "value": steps[4]}],
            "meta": {**meta, "format": "dd"},
        },
    ]


def _request(rec: dict, attempt: int, seed: int) -> dict:
    # The retry gets its own seed: at temperature 0.2 the same seed would ask for the same text again.
    return {
        "id": rec["id"],
        "task": "annotate",
        "format": "cod",
        "index": attempt,
        "seed": candidate_seed(seed, rec["id"], attempt),
        "prompt": teacher_prompt(original_caption(rec)),
        "image": rec["image"],
    }


def accept(row: dict) -> tuple[list[str] | None, str]:
    """(the five steps, "") for a well-formed teacher answer, else (None, why not)."""
    if row.get("error") is not None:
        return None, f"teacher request failed: {row['error']}"
    try:
        return parse_cod(row["text"]), ""
    except FormatError as exc:
        return None, f"not 5 well-formed CoD steps: {exc}"


def annotate_cod(
    records: list[dict], teacher, seed: int = 0, max_new_tokens: int = 1200, temperature: float = TEACHER_TEMPERATURE, advance=None
) -> tuple[list[dict], list[dict]]:
    """(CoD + DD records, quarantine rows) for caption records, through `teacher` (a RemoteSampler).

    Malformed answers are asked again once; server failures are not (the client already retried them).
    """
    by_id = {rec["id"]: rec for rec in records}
    first = teacher.complete([_request(rec, 0, seed) for rec in records], max_tokens=max_new_tokens, temperature=temperature, advance=advance)
    accepted: dict[str, list[str]] = {}
    quarantine: list[dict] = []
    again: list[dict] = []
    raw: dict[str, list[str]] = {}
    for row in first:
        steps, why = accept(row)
        if steps is not None:
            accepted[row["id"]] = steps
        elif row.get("error") is not None:
            quarantine.append({"id": row["id"], "reason": why, "raw": []})
        else:
            raw[row["id"]] = [row["text"]]
            again.append(_request(by_id[row["id"]], 1, seed))
    for row in teacher.complete(again, max_tokens=max_new_tokens, temperature=temperature, advance=advance) if again else []:
        steps, why = accept(row)
        if steps is not None:
            accepted[row["id"]] = steps
        else:
            quarantine.append(
                {"id": row["id"], "reason": f"after one retry: {why}", "raw": raw[row["id"]] + ([row["text"]] if row.get("text") is not None else [])}
            )
    out = [r for rec in records if rec["id"] in accepted for r in cod_records(rec, accepted[rec["id"]], teacher.model_name)]
    return out, sorted(quarantine, key=lambda q: q["id"])
