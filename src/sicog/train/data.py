"""LLaVA records -> training features with an assistant-only loss, and the collator that batches them.

Why transformers' own machinery: the processor's `apply_chat_template(..., return_assistant_tokens_mask=True)`
renders the chat template, expands "<image>" into the vision tower's patch count and maps the
template's `{% generation %}` spans to tokens. Re-deriving any of that by hand would be a second
copy of the template that could drift from the one generation uses.

Loss mask (paper: standard LLaVA SFT): every token of every gpt turn, including its closing
<|im_end|>, is a label; the system/user turns, role headers and image tokens are -100. A record's
`system` field (normalized from `{"from": "system"}` turns) is rendered as a first system message.

Bad input never crashes a stage: a record that is too long, has an unreadable image or is malformed
is skipped and counted under its reason (the counts go into the stage's train_log.json).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sicog import store
from sicog.data.images import EMBEDDED, open_image
from sicog.models import num_image_tokens, to_messages
from sicog.records import check_image, resolve_image

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy (and LLaVA's loss) ignores

# Skip reasons (stable keys: they are counted and reported).
TOO_LONG = "too_long"
BAD_IMAGE = "bad_image"
MALFORMED = "malformed"
NO_ANSWER = "no_answer"
LATE_SKIP = "sicog_late_skip"  # a record that failed when encoded for a batch (see LazyRecords)


class SkipRecord(ValueError):
    """A record that cannot be trained on; `reason` is one of the skip keys above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _check_turns(rec: dict) -> None:
    conv = rec.get("conversations") if isinstance(rec, dict) else None
    if not isinstance(conv, list) or not conv:
        raise SkipRecord(MALFORMED, "no conversations")
    for turn in conv:
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
            raise SkipRecord(MALFORMED, "malformed conversation turn")
    if not any(t["from"] == "gpt" for t in conv):
        raise SkipRecord(NO_ANSWER)
    system = rec.get("system")
    if system is not None and not (isinstance(system, str) and system.strip()):
        raise SkipRecord(MALFORMED, "the system prompt is not a non-empty text")


def record_messages(rec: dict) -> list[dict]:
    """A checked record's chat messages: its `system` prompt first (when it has one), then its turns."""
    return to_messages(rec["conversations"], has_image=rec.get("image") is not None, system=rec.get("system"))


def load_image(image: str, image_root: str | Path | None) -> Image.Image:
    """A record's image as RGB (a path under `image_root`, or a catalog record's absolute URI), or
    SkipRecord(BAD_IMAGE) (missing, corrupt, escaping the root, oversized)."""
    try:
        return open_image(image, image_root)
    except Exception as exc:  # PIL raises many types for corrupt files: all mean "skip this record"
        raise SkipRecord(BAD_IMAGE, str(exc)) from None


def _local_image(image: str, image_root: str | Path | None) -> Path | None:
    """The local file of an image, for the cheap header check before training; None for images in
    object storage or inside a dataset (checked when their batch is encoded, not one GET per record
    up front)."""
    if store.is_remote(image) or image.startswith(EMBEDDED):
        return None
    if image.startswith("file://"):
        return store.local_path(image)
    if image_root is None or store.is_remote(str(image_root)):
        return None
    return resolve_image(image, image_root)


def encode_record(rec: dict, processor, image_root: str | Path | None, max_length: int) -> dict:
    """One record -> {"id", "input_ids", "labels", "pixel_values"?}, or raises SkipRecord."""
    _check_turns(rec)
    image = rec.get("image")
    messages = record_messages(rec)
    if image is not None:
        user = next(m for m in messages if m["role"] == "user")  # the image item leads the first user turn
        user["content"][0]["image"] = load_image(image, image_root)
    try:
        # Python lists, not tensors: the assistant-mask pass walks offsets token by token.
        out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    except Exception as exc:  # a template or processor error on one record must not stop the stage
        raise SkipRecord(MALFORMED, f"{type(exc).__name__}: {exc}") from None
    input_ids = list(out["input_ids"][0])
    mask = list(out["assistant_masks"][0])
    if len(input_ids) > max_length:
        raise SkipRecord(TOO_LONG, f"{len(input_ids)} > {max_length} tokens")
    if not any(mask):
        raise SkipRecord(NO_ANSWER, "no assistant tokens")
    feature = {
        "id": str(rec.get("id")),
        "input_ids": input_ids,
        "labels": [t if m else IGNORE_INDEX for t, m in zip(input_ids, mask)],
    }
    if image is not None:
        feature["pixel_values"] = torch.as_tensor(out["pixel_values"][0])
    return feature


def encode_records(records: Iterable[dict], processor, image_root: str | Path, max_length: int) -> tuple[list[dict], Counter]:
    """Encode every record once (the stage's data are small); returns (features, skipped counts)."""
    features: list[dict] = []
    skipped: Counter = Counter()
    for rec in records:
        try:
            features.append(encode_record(rec, processor, image_root, max_length))
        except SkipRecord as exc:
            skipped[exc.reason] += 1
    return features, skipped


class LazyRecords(torch.utils.data.Dataset):
    """Training records encoded when the Trainer asks for them, never kept: no stage waits for the
    whole set up front, and memory does not grow with the data.

    `records`: any sequence of records (a list, or sicog.data.training's TrainingRecords, which reads
    record i when asked for it). The constructor makes one cheap pass, one record at a time: it
    renders each record's chat text and tokenizes the texts `TOKENIZE_CHUNK` at a time to get exact
    lengths (an image adds the patch count minus its one marker token), checks each image file's
    header, and skips and counts what is malformed, too long or without a readable image. It keeps
    only the kept records' positions in `records` and their lengths (int64 + int32 per record: about
    8 MB for LLaVA-665k), never a record, a text or a token id. Pixels and assistant masks come only
    when the Trainer asks for a record. `lengths` feeds length-grouped batching without encoding anything.

    A record that passes the check but fails to encode later (an image corrupt past its header, or one
    in object storage or inside a dataset, which is not fetched up front) comes back as a skip marker
    ({LATE_SKIP: reason, "index": i}). The Collator drops it and hands the batch's markers on under
    LATE_SKIP; the trainer gives them to `count_late`, in the training process. Why not count here:
    with data-loader workers (`train.dataloader_workers`), this method runs in a worker process whose
    counter the training process never sees.
    """

    TOKENIZE_CHUNK = 1024

    def __init__(self, records, processor, image_root: str | Path, max_length: int):
        self.records, self.processor, self.image_root, self.max_length = records, processor, image_root, max_length
        self.skipped: Counter = Counter()
        self._failed: set[int] = set()  # late skips, counted once however many epochs meet them
        image_tokens = num_image_tokens(processor)
        positions, lengths = array("q"), array("i")
        texts: list[str] = []
        pending: list[tuple[int, bool]] = []  # (position, has an image) of the texts of this chunk

        def measure() -> None:
            counts = [len(ids) for ids in processor.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            for (position, has_image), n in zip(pending, counts):
                n += image_tokens - 1 if has_image else 0
                if n > max_length:
                    self.skipped[TOO_LONG] += 1
                    continue
                positions.append(position)
                lengths.append(n)
            texts.clear()
            pending.clear()

        for position in range(len(records)):
            rec = records[position]
            try:
                _check_turns(rec)
                local = _local_image(rec["image"], image_root) if rec.get("image") is not None else None
                if local is not None:
                    check_image(local)
                texts.append(processor.apply_chat_template(record_messages(rec), tokenize=False))
            except SkipRecord as exc:
                self.skipped[exc.reason] += 1
                continue
            except ValueError:  # resolve_image / check_image: missing, corrupt, escaping, oversized
                self.skipped[BAD_IMAGE] += 1
                continue
            except Exception:  # a template error on one record must not stop the stage
                self.skipped[MALFORMED] += 1
                continue
            pending.append((position, rec.get("image") is not None))
            if len(texts) == self.TOKENIZE_CHUNK:
                measure()
        if texts:
            measure()
        self.positions = np.frombuffer(positions, dtype=np.int64) if len(positions) else np.zeros(0, np.int64)
        self.lengths = np.frombuffer(lengths, dtype=np.int32) if len(lengths) else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        # Encoded on every access and never kept: memory stays that of the index, whatever the
        # dataset's size (an epoch of 558k encoded records with pixels would be ~23 GB per rank).
        try:
            return encode_record(self.records[int(self.positions[i])], self.processor, self.image_root, self.max_length)
        except SkipRecord as exc:
            return {LATE_SKIP: exc.reason, "index": int(i)}

    def count_late(self, skips: Iterable[tuple[int, str]]) -> None:
        """Count late skips (index, reason) from the Collator's batches, once per record however many
        epochs meet it."""
        for i, reason in skips:
            if i not in self._failed:
                self._failed.add(i)
                self.skipped[reason] += 1


class Collator:
    """Right-pads a batch and stacks pixel_values of the records that have an image.

    A batch may mix image and text-only records: LLaVA fills the image-token positions with the
    stacked image features in order, so the i-th image belongs to the i-th record that has one.
    LazyRecords' late skips are left out of the batch and listed under LATE_SKIP as (index, reason),
    a key the trainer removes before the model sees the batch (`pop_late_skips`).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        skips = [(f["index"], f[LATE_SKIP]) for f in features if LATE_SKIP in f]
        features = [f for f in features if LATE_SKIP not in f]
        if not features:
            raise RuntimeError(f"every record of a batch failed to encode: {skips}")
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixels = [f["pixel_values"] for f in features if "pixel_values" in f]
        if pixels:
            batch["pixel_values"] = torch.stack(pixels)
        if skips:
            batch[LATE_SKIP] = skips
        return batch


def pop_late_skips(batch: dict, dataset) -> dict:
    """Remove a batch's late skips (see Collator) and count them on `dataset` when it is LazyRecords."""
    skips = batch.pop(LATE_SKIP, None)
    if skips and isinstance(dataset, LazyRecords):
        dataset.count_late(skips)
    return batch
