"""One raw row -> one SICOG record in the LLaVA contract, or a `Quarantined` with a stable reason.

What real datasets do that the rest of SICOG must not see:
- `<image>` at the end of the human turn, in a later turn, or absent: an image record gets exactly
  one marker, at the start of its first human turn (`<image>\\n<question>`), as LLaVA's loader
  assumes; a record with a marker but no image is quarantined.
- no `id`: the id is `sha256-` + the first 16 hex digits of the SHA-256 of the record's canonical
  JSON (keys sorted, `(",", ":")` separators, UTF-8, the `id` key left out, bytes replaced by their
  own SHA-256). It depends only on the record's content, so it is stable across runs, machines and
  positions in the file; two identical records get the same id (and the second is a duplicate).
- the same id in two sources: every id is namespaced as `<source name>/<id>`; `meta.source`,
  `meta.source_id` and `meta.row` keep where it came from.
- `system` turns (`{"from": "system"}`, LLaVA-NeXT style): moved out of the turns into a `system`
  field (turns joined by a blank line), which the training code uses as the system prompt.
- `image: [one path]`: unwrapped; several images per record are quarantined (not supported).

Validation per role reuses `sicog.records.record_problem` (conversation shape, empty question, no
answer), minus its image check: images are checked when they are loaded, per batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sicog.records import IMAGE_TOKEN, record_problem

LABELED = ("align", "instruct", "perception", "reasoning")  # need a gpt answer
NEED_IMAGE = ("pool_images", "pool_vqa")
ROW_ROLES = ("truth", "heldout")  # free-form rows: an id and any fields


class Quarantined(ValueError):
    """A row that cannot be used. `reason` is a stable key (counted in reports); `detail` says more."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _canonical(value: Any) -> Any:
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def content_id(raw: dict) -> str:
    """The stable id of a record without one (see the module docstring)."""
    body = _canonical({k: v for k, v in raw.items() if k != "id"})
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "sha256-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def record_id(raw: dict) -> tuple[str, bool]:
    """(the record's own id as a string, False) or (its content id, True) when it has none."""
    rid = raw.get("id")
    if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip():
        return str(rid), False
    return content_id(raw), True


def _split_system(rec: dict) -> None:
    conv = rec.get("conversations")
    if not isinstance(conv, list):
        return
    system = [t for t in conv if isinstance(t, dict) and t.get("from") == "system"]
    if system:
        rec["conversations"] = [t for t in conv if not (isinstance(t, dict) and t.get("from") == "system")]
        texts = [t.get("value") for t in system]
        if not all(isinstance(t, str) for t in texts):
            raise Quarantined("malformed conversation turn", "a system turn without a text value")
        rec["system"] = "\n\n".join(t.strip() for t in texts)
    if "system" in rec and not (isinstance(rec["system"], str) and rec["system"].strip()):
        raise Quarantined("empty system prompt")


def _place_marker(rec: dict) -> None:
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
        return  # record_problem names the malformed turn
    has_marker = any(IMAGE_TOKEN in t["value"] for t in conv)
    if "image" not in rec:
        if has_marker:
            raise Quarantined("image marker without an image")
        return
    first = True
    for turn in conv:
        if turn.get("from") == "human":
            text = turn["value"].replace(IMAGE_TOKEN, "").strip()
            turn["value"] = f"{IMAGE_TOKEN}\n{text}" if first else text
            first = False


def normalize(raw: Any, role: str, namespace: str, row: int, prefix_ids: bool = True) -> dict:
    """The SICOG record of one raw row (already converted from its container), or Quarantined.
    `namespace`: the source's name, prefixed to its ids unless `prefix_ids` is false.

    `raw` is consumed: readers parse a fresh object per call, so its turns are edited in place."""
    if not isinstance(raw, dict):
        raise Quarantined("not a JSON object")
    rid, hashed = record_id(raw)
    rec = dict(raw)
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    rec["id"] = f"{namespace}/{rid}" if prefix_ids else rid
    rec["meta"] = {**meta, "source": namespace, "source_id": rid, "row": row, **({"id_from_content": True} if hashed else {})}
    image = rec.pop("image", None)
    if isinstance(image, list):
        if len(image) > 1:
            raise Quarantined("multiple images", f"{len(image)} images (one per record is supported)")
        image = image[0] if image else None
    if image is not None and image != "":
        if not isinstance(image, str):
            raise Quarantined("malformed image field", type(image).__name__)
        rec["image"] = image
    if role in ROW_ROLES:
        return rec
    _split_system(rec)
    _place_marker(rec)
    if role in NEED_IMAGE and "image" not in rec:
        raise Quarantined("no image", f"{role} records need one")
    if role == "pool_text" and "image" in rec:
        raise Quarantined("image in a text-only pool")
    if not (role == "pool_images" and rec.get("conversations") is None):  # {"id", "image"} is a whole caption-pool entry
        problem = record_problem({k: v for k, v in rec.items() if k != "image"}, ".", need_answer=role in LABELED)
        if problem is not None:
            raise Quarantined(problem)
    return rec
