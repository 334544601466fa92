"""LLaVA conversation records and the JSONL rows that flow between SICOG steps.

Contracts (see ARCHITECTURE.md): source records `{"id", "image"?, "conversations": [...]}`;
candidates `{"id", "task", "format", "index", "seed", "prompt", "image"?, "text", "model"}`; scored
rows one per instance; curated records carry a `sicog` provenance field. Every row keeps its `id`:
steps join on ids, never on positions.

Bad input never crashes a run and is never dropped silently: `validate_records` splits a source file
into good records and quarantine rows `{"line", "id"?, "reason", "raw"}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

IMAGE_TOKEN = "<image>"
MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are treated as decompression bombs and quarantined


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text. Only "\n" ends one: str.splitlines also splits at U+2028, U+2029, U+0085
    and other separators, which json.dumps(..., ensure_ascii=False) leaves as they are inside a string, and
    a sampled text can hold them (a random-weight model's output cut one candidate row in two)."""
    return text.split("\n")


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a JSONL file (a JSON array file is accepted too, as LLaVA data often comes that way)."""
    with open(path, encoding="utf-8") as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
        fh.seek(0)
        if head == "[":
            yield from json.load(fh)
            return
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically (temp file + rename): a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def resolve_image(image: str, root: str | Path) -> Path:
    """The image file of a record, refusing absolute paths and paths that escape the data root."""
    if not isinstance(image, str) or not image:
        raise ValueError("image is not a non-empty string")
    if os.path.isabs(image):
        raise ValueError(f"image path is absolute: {image}")
    root = Path(root).resolve()
    path = (root / image).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"image path escapes the data root: {image}")
    return path


def check_image(path: Path) -> None:
    """Open and fully decode the image header, refusing missing, corrupt and oversized files."""
    if not path.is_file():
        raise ValueError(f"image not found: {path.name}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ValueError(f"image over the pixel limit ({w}x{h} > {MAX_IMAGE_PIXELS} pixels)")
            im.verify()
    except ValueError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ValueError(f"corrupt image: {type(exc).__name__}") from None


def record_problem(rec: Any, root: str | Path, need_answer: bool = True) -> str | None:
    """Why a source record cannot be used, or None. `need_answer=False` for unlabeled pools."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if not isinstance(rec.get("id"), (str, int)) or rec.get("id") == "":
        return "missing id"
    conv = rec.get("conversations")
    unlabeled_image = conv is None and not need_answer and rec.get("image")  # a caption pool entry: {"id", "image"}
    if not unlabeled_image:
        if not isinstance(conv, list) or not conv:
            return "no conversations"
        for turn in conv:
            if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
                return "malformed conversation turn"
        if conv[0]["from"] != "human" or not conv[0]["value"].replace(IMAGE_TOKEN, "").strip():
            return "empty question"
        if need_answer and not any(t["from"] == "gpt" and t["value"].strip() for t in conv):
            return "no answer"
    if "image" in rec and rec["image"] is not None:
        try:
            check_image(resolve_image(rec["image"], root))
        except ValueError as exc:
            return str(exc)
    return None


def validate_records(path: str | Path, root: str | Path, need_answer: bool = True) -> tuple[list[dict], list[dict]]:
    """(good records, quarantine rows) of a JSONL source file; ids must be unique."""
    good: list[dict] = []
    quarantined: list[dict] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if text.lstrip().startswith("["):
        try:
            items = [(i + 1, json.dumps(r)) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            return [], [{"line": 0, "reason": f"malformed JSON array: {exc.msg}", "raw": text[:200]}]
    else:
        items = [(i + 1, line) for i, line in enumerate(jsonl_lines(text)) if line.strip()]
    for lineno, raw in items:
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            quarantined.append({"line": lineno, "reason": f"malformed JSON: {exc.msg}", "raw": raw[:500]})
            continue
        reason = record_problem(rec, root, need_answer)
        if reason is None and str(rec["id"]) in seen:
            reason = "duplicate id"
        if reason is not None:
            quarantined.append({"line": lineno, "id": rec.get("id") if isinstance(rec, dict) else None, "reason": reason, "raw": raw[:500]})
            continue
        rec["id"] = str(rec["id"])
        seen.add(rec["id"])
        good.append(rec)
    return good, quarantined


def question_of(rec: dict) -> str:
    """The first human turn without the image marker."""
    return rec["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()


# --- the rows that flow between steps 2 and 3 (typed at the writer and the reader) ---------------


def _missing(kind: str, row: Mapping, required: tuple[str, ...]) -> None:
    if not isinstance(row, Mapping):
        raise ValueError(f"{kind} row is {type(row).__name__}, not an object")
    missing = [key for key in required if key not in row]
    if missing:
        raise ValueError(f"{kind} row lacks {', '.join(missing)} (id {row.get('id')!r})")


@dataclass(frozen=True)
class Candidate:
    """One sampled candidate (step 2 writes it, step 3 reads it); `id` is the source record's id.

    `model` names the model that produced it: a LLaVA's last training run (e.g. "perception/warmup"),
    "<run>:backbone" for the language model extracted from it, a configured backbone LLM's URI, or a
    served model. A failed candidate has `text` None and an `error`."""

    id: str
    task: str
    format: str
    index: int
    seed: int | None
    prompt: str
    text: str | None
    model: str | None = None
    image: str | None = None
    error: str | None = None
    system: str | None = None  # the source record's system prompt, sent before `prompt`

    REQUIRED: ClassVar[tuple[str, ...]] = ("id", "task", "format", "index", "text")

    @classmethod
    def from_row(cls, row: Mapping) -> "Candidate":
        """ValueError naming the missing keys; unknown keys are ignored."""
        _missing("candidate", row, cls.REQUIRED)
        known = {f.name for f in fields(cls)}
        values = {key: row[key] for key in known if key in row}
        return cls(**{"seed": None, "prompt": "", **values, "id": str(row["id"])})

    def to_row(self) -> dict:
        """The JSONL row: `image`, `error` and `system` only when set."""
        row = asdict(self)
        for key in ("image", "error", "system"):
            if row[key] is None:
                del row[key]
        return row


@dataclass
class ScoredRow:
    """One scored instance (step 3a writes it, step 3b reads it): every candidate in index order,
    the compared text and score of each (None: malformed), the winner's `index` and score, and the
    keep decision (None until selection ran)."""

    id: str
    task: str
    candidates: list[dict]
    compared: list[str | None]
    scores: list[float | None]
    best: int | None
    score: float | None
    similarity: str
    malformed: list[int] = field(default_factory=list)
    format_errors: list[str] = field(default_factory=list)
    kept: bool | None = None

    REQUIRED: ClassVar[tuple[str, ...]] = ("id", "task", "candidates", "scores", "best", "score", "kept")

    @classmethod
    def from_row(cls, row: Mapping) -> "ScoredRow":
        _missing("scored", row, cls.REQUIRED)
        known = {f.name for f in fields(cls)}
        values = {key: row[key] for key in known if key in row}
        return cls(**{"compared": [None] * len(row["candidates"]), "similarity": "", **values})

    def to_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Provenance:
    """The `sicog` field of a curated record: where its answer came from. `conversation`: the CoD
    winner was converted to the paper's 5-turn conversation (its score reached the conversation
    threshold)."""

    cycle: int
    task: str
    format: str
    index: int
    seed: int | None
    score: float | None
    scores: list[float | None]
    model: str | None
    conversation: bool = False


@dataclass(frozen=True)
class CuratedRecord:
    """A LLaVA training record made from a kept instance (step 3b writes it, stage 1.5 reads it)."""

    id: str
    conversations: list[dict]
    sicog: Provenance
    image: str | None = None
    system: str | None = None  # the system prompt its winner was sampled under; training renders it

    def to_row(self) -> dict:
        row = {"id": self.id, **({"image": self.image} if self.image else {}), **({"system": self.system} if self.system else {})}
        return {**row, "conversations": self.conversations, "sicog": asdict(self.sicog)}

    @classmethod
    def from_row(cls, row: Mapping) -> "CuratedRecord":
        _missing("curated", row, ("id", "conversations", "sicog"))
        return cls(
            id=str(row["id"]), conversations=list(row["conversations"]), sicog=Provenance(**row["sicog"]), image=row.get("image"), system=row.get("system")
        )
