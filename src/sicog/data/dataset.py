"""Records of a catalog role as a lazy sequence, and the batched pass that training runs.

    data = open_role(catalog, "instruct")        # nothing is read yet
    len(data); data[i]                           # index built on first use; one record, no image
    for batch in data.batches(64, seed=0):       # weighted mix, images fetched per batch
        batch.records, batch.images, batch.quarantined

`SourceData` is one source: its reader (see formats.py), the `limit` subset and per-row
normalization. Indexing makes one streaming pass per source that keeps, per row, only its position
and an 8-byte hash of its id. Memory is O(rows x 16 bytes), independent of record and image sizes;
no record is cached. For Hugging Face sources only the `id` column is read at indexing time, so
rows without an id column (content ids) are not checked for repeats.

Repeated ids inside a source (the public LLaVA-665k file reuses ids, text-only rows among them):
only the rows whose id hash occurs more than once are read again at indexing time, and compared by
the content hash of `normalize.content_id` (the row's canonical JSON, its `id` left out).
- Same id, same content as an earlier selected row: an exact repeat, quarantined as "duplicate id".
- Same id, different content: both are kept. The content of the id's first row in the file keeps
  the id; any other content gets `<id>~<16 hex digits>`, the digits of its own content id (so
  `<source>/<id>~<hex>` once namespaced). The new id depends only on the file's content, never on
  the `limit` subset, the seed, the reader or the run; `meta.source_id` says `<id>~<hex>` too.

Records and annotation files in s3:// are fetched once to a temporary local copy for the life of
the reader (JSON needs seeking; arrow needs memory-mapping); images are never copied in bulk.

A bad row never raises out of `batches()`: it comes back in `batch.quarantined` as
`{"role", "source", "row", "id", "reason", "detail", "raw"}`. `data[i]` raises `Quarantined` (with
`.row`, the same dict) for a bad row. `id` is the id the record would have had (namespaced
`<source>/<id>` unless the source says `prefix_ids: false`), or None for a row without one that can
be read (malformed JSON, not an object).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import weakref
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sicog import store
from sicog.data.catalog import Catalog, Source
from sicog.data.formats import HFRows, Malformed, detect_format, open_rows
from sicog.data.images import decode_image, embedded_image_uri, image_uri, read_image_bytes
from sicog.data.normalize import Quarantined, content_id, normalize, record_id
from sicog.errors import UserError
from sicog.prompts.cot import convert_llava_cot_items


def _key(obj: Any) -> int:
    """8-byte hash of a parsed row's id (0: no usable id, never a duplicate)."""
    if not isinstance(obj, dict):
        return 0
    rid, _ = record_id(obj)
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8"), digest_size=8).digest(), "big") or 1


REPEAT = "~"  # <id>~<hex>: a later row of a repeated id with content of its own (see the module docstring)


def _in(sorted_rows: np.ndarray, row: int) -> bool:
    k = int(np.searchsorted(sorted_rows, row))
    return k < len(sorted_rows) and int(sorted_rows[k]) == row


class SourceData:
    """One catalog source of one role: a sequence of normalized records (llava-cot rows count twice)."""

    def __init__(self, source: Source, role: str):
        self.source, self.role, self.name = source, role, source.name
        self._reader = None
        self._rows: np.ndarray | None = None  # selected row numbers, in file order
        self._duplicates = np.zeros(0, np.int64)  # file rows that repeat an earlier selected row exactly (sorted)
        self._renamed = np.zeros(0, np.int64)  # file rows whose id gets ~<content hex> (sorted)
        self._local = contextlib.ExitStack()
        weakref.finalize(self, self._local.close)
        self.per_row = 2 if source.format == "llava-cot" else 1
        self.fmt = source.format  # the declared format until open() detects it

    # --- opening and indexing ---

    def _local_path(self) -> Path:
        uri = self.source.uri
        if store.is_remote(uri):
            return self._local.enter_context(store.node_input(uri))
        path = store.local_path(uri)
        if not path.exists():
            raise UserError(f"catalog: {self.role}/{self.name}: no such file or folder: {uri}")
        return path

    @property
    def image_root(self) -> str:
        if self.source.images:
            return self.source.images
        uri = self.source.uri.rstrip("/")
        if self.fmt == "hf":
            return uri
        return uri.rsplit("/", 1)[0] if "/" in uri else "."

    def open(self) -> "SourceData":
        """Build the index (idempotent); UserError for a source that cannot be read at all."""
        if self._rows is not None:
            return self
        path = self._local_path()
        self.fmt = detect_format(path, self.source.format)
        reader = open_rows(path, self.fmt)
        keys = array("Q", (_key(obj) for obj in reader.index()))
        rows = np.arange(len(keys), dtype=np.int64)
        if self.source.limit is not None and self.source.limit < len(rows):
            rng = np.random.default_rng(self.source.seed)
            rows = np.sort(rng.choice(len(rows), self.source.limit, replace=False))
        self._reader = reader
        self._find_repeats(np.frombuffer(keys, dtype=np.uint64) if len(keys) else np.zeros(0, np.uint64), rows)
        self._rows = rows
        return self

    def _find_repeats(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Renamed rows (over the whole file) and exact repeats (among the selected `rows`) of the ids
        whose hash occurs more than once; only those rows are read again."""
        order = np.argsort(keys, kind="stable")
        ranked = keys[order]
        same = (ranked[1:] == ranked[:-1]) & (ranked[1:] != 0)
        members = np.zeros(len(keys), dtype=bool)
        members[order[1:][same]] = True
        members[order[:-1][same]] = True
        selected = np.zeros(len(keys), dtype=bool)
        selected[rows] = True
        first_content: dict[str, str] = {}  # per repeated id: the content hash of its first row in the file
        seen: set[tuple[str, str]] = set()  # (id, content hash) of the selected rows so far
        duplicates, renamed = [], []
        for row in np.flatnonzero(members).tolist():  # file order
            raw = self._reader.row(row)
            if not isinstance(raw, dict):
                continue
            rid, _ = record_id(raw)
            digest = content_id(raw)
            if first_content.setdefault(rid, digest) != digest:
                renamed.append(row)
            if selected[row]:
                if (rid, digest) in seen:
                    duplicates.append(row)
                seen.add((rid, digest))
        self._duplicates = np.asarray(duplicates, dtype=np.int64)
        self._renamed = np.asarray(renamed, dtype=np.int64)

    def __len__(self) -> int:
        self.open()
        return len(self._rows) * self.per_row

    # --- records ---

    def _quarantined(self, row: int, reason: str, detail: str, raw: Any, rid: str | None = None) -> Quarantined:
        """The Quarantined of a bad row; its `.row` carries the id the record would have had (namespaced)."""
        if rid is not None and self.source.prefix_ids:
            rid = f"{self.name}/{rid}"
        exc = Quarantined(reason, detail)
        text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=lambda b: f"<{len(b)} bytes>" if isinstance(b, bytes) else str(b))
        exc.row = {"role": self.role, "source": self.name, "row": row, "id": rid, "reason": reason, "detail": detail, "raw": text[:500]}
        return exc

    def __getitem__(self, i: int) -> dict:
        """Record i (no image read), or Quarantined with `.row` the quarantine row."""
        self.open()
        if not 0 <= i < len(self):
            raise IndexError(i)
        pos, twin = divmod(i, self.per_row)
        row = int(self._rows[pos])
        raw = self._reader.row(row)
        if isinstance(raw, Malformed):
            raise self._quarantined(row, "malformed JSON", str(raw).partition(": ")[2], raw.raw)
        rid = record_id(raw)[0] if isinstance(raw, dict) else None
        if rid is not None and _in(self._renamed, row):
            rid = f"{rid}{REPEAT}{content_id(raw).removeprefix('sha256-')}"
            raw = {**raw, "id": rid}
        if _in(self._duplicates, row):
            raise self._quarantined(row, "duplicate id", f"{self.name}/{rid} appears earlier in this source with the same content", raw, rid)
        try:
            rec = self._convert(raw, row, twin)
            return normalize(rec, self.role, self.name, row, prefix_ids=self.source.prefix_ids)
        except Quarantined as exc:
            raise self._quarantined(row, exc.reason, exc.detail, raw, rid) from None

    def _convert(self, raw: Any, row: int, twin: int) -> Any:
        """Container quirks -> a plain LLaVA record: HF image cells, LLaVA-CoT tags."""
        if isinstance(self._reader, HFRows) and isinstance(raw, dict) and isinstance(raw.get("image"), dict):
            cell = raw["image"]
            if cell.get("bytes") is not None:
                raw["image"] = cell.get("path") or f"{self.name}:{row}"
                raw["meta"] = {**(raw.get("meta") or {}), "embedded_image": True}
            else:
                raw["image"] = cell.get("path")
        if self.source.format != "llava-cot":
            return raw
        if isinstance(raw, dict):
            raw = {**raw, "id": record_id(raw)[0]}
        converted, bad = convert_llava_cot_items([(row, raw)])
        if bad:
            raise Quarantined(bad[0]["reason"])
        return converted[twin]

    def image_bytes(self, rec: dict) -> bytes:
        if rec.get("meta", {}).get("embedded_image"):
            return self._reader.row(rec["meta"]["row"])["image"]["bytes"]
        return read_image_bytes(image_uri(self.image_root, rec["image"]))


@dataclass
class Batch:
    """Good records, their images (None for text-only, aligned with records) and the rows quarantined on the way."""

    records: list[dict] = field(default_factory=list)
    images: list[Image.Image | None] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)


class RoleData:
    """The records of one role: its sources one after the other (`data[i]`), or mixed by weight (`order(seed)`)."""

    def __init__(self, role: str, sources: list[SourceData]):
        self.role, self.sources = role, sources
        self._by_name = {s.name: s for s in sources}
        self._starts: list[int] | None = None

    def source(self, name: str) -> SourceData:
        return self._by_name[name]

    def _offsets(self) -> list[int]:
        if self._starts is None:
            starts = [0]
            for s in self.sources:
                starts.append(starts[-1] + len(s))
            self._starts = starts
        return self._starts

    def __len__(self) -> int:
        return self._offsets()[-1]

    def __getitem__(self, i: int) -> dict:
        starts = self._offsets()
        if not 0 <= i < starts[-1]:
            raise IndexError(i)
        k = bisect.bisect_right(starts, i) - 1
        return self.sources[k][i - starts[k]]

    def located(self, i: int) -> dict:
        """Record i with its image as an absolute URI (what read_role returns), or Quarantined with `.row`."""
        rec = self[i]
        if "image" not in rec:
            return rec
        meta, source = rec["meta"], self.source(rec["meta"]["source"])
        try:
            if meta.get("embedded_image"):
                if store.is_remote(source.source.uri):
                    raise Quarantined("embedded image of a remote dataset", "copy the Hugging Face folder next to the run")
                rec["image"] = embedded_image_uri(store.local_path(source.source.uri).resolve(), meta["row"])
            else:
                uri = image_uri(source.image_root, rec["image"])
                rec["image"] = uri if store.is_remote(uri) else f"file://{uri}"
        except Quarantined as exc:
            exc.row = {
                "role": self.role,
                "source": source.name,
                "row": meta["row"],
                "id": rec["id"],
                "reason": exc.reason,
                "detail": exc.detail,
                "raw": json.dumps(rec, ensure_ascii=False)[:500],
            }
            raise
        return rec

    def order(self, seed: int) -> np.ndarray:
        """One mixed epoch: each source's indices repeated floor(weight) times plus a seeded
        (weight mod 1) share of them, then shuffled together with `seed`."""
        starts = self._offsets()
        parts = []
        for k, s in enumerate(self.sources):
            n, w = len(s), s.source.weight
            whole, frac = int(w), w - int(w)
            idx = np.arange(starts[k], starts[k + 1], dtype=np.int64)
            parts += [idx] * whole
            if frac and n:
                rng = np.random.default_rng([seed, s.source.seed, k])
                parts.append(np.sort(rng.choice(idx, int(round(frac * n)), replace=False)))
        everything = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return np.random.default_rng(seed).permutation(everything)

    def load_images(self, records: list[dict]) -> list[Image.Image | Quarantined | None]:
        """The images of `records` (None: text-only; Quarantined: could not be used). Records of one
        call that share an image (a caption and its questions) share one fetch and one decoded
        image; fetches run in parallel when any image root is in object storage."""

        def key(rec: dict):
            meta = rec["meta"]
            return (meta["source"], meta["row"]) if meta.get("embedded_image") else (meta["source"], rec["image"])

        def one(rec: dict):
            try:
                return decode_image(self._by_name[rec["meta"]["source"]].image_bytes(rec))
            except Quarantined as exc:
                return exc

        firsts = {}
        for rec in records:
            if "image" in rec:
                firsts.setdefault(key(rec), rec)
        remote = any(store.is_remote(s.image_root) for s in self.sources)
        if remote and len(firsts) > 1:
            with ThreadPoolExecutor(min(store.s3_settings().parallel, len(firsts)), thread_name_prefix="sicog-data") as pool:
                loaded = dict(zip(firsts, pool.map(one, firsts.values())))
        else:
            loaded = {k: one(rec) for k, rec in firsts.items()}
        return [loaded[key(rec)] if "image" in rec else None for rec in records]

    def batches(self, batch_size: int = 64, seed: int | None = None, images: bool = True) -> Iterator[Batch]:
        """The training pass: every index in file order (seed None) or in the mixed order of
        `order(seed)`, `batch_size` at a time, with images unless `images=False`."""
        indices = np.arange(len(self), dtype=np.int64) if seed is None else self.order(seed)
        for start in range(0, len(indices), batch_size):
            batch = Batch()
            for i in indices[start : start + batch_size].tolist():
                try:
                    batch.records.append(self[i])
                except Quarantined as exc:
                    batch.quarantined.append(exc.row)
            if images:
                loaded = self.load_images(batch.records)
                keep = []
                for rec, im in zip(batch.records, loaded):
                    if isinstance(im, Quarantined):
                        meta = rec["meta"]
                        batch.quarantined.append(
                            {
                                "role": self.role,
                                "source": meta["source"],
                                "row": meta["row"],
                                "id": rec["id"],
                                "reason": im.reason,
                                "detail": im.detail,
                                "raw": json.dumps(rec, ensure_ascii=False)[:500],
                            }
                        )
                    else:
                        keep.append((rec, im))
                batch.records = [r for r, _ in keep]
                batch.images = [im for _, im in keep]
            yield batch


def read_role(catalog: Catalog, role: str) -> tuple[list[dict], list[dict]]:
    """(records, quarantine rows) of `role`, sources one after the other in file order, each image as
    an absolute URI (see images.open_image): the form the cycle's steps pass between processes and
    keep in candidates and curated records, so no later step needs to know the record's source.
    Holds every record: training reads a role through `sicog.data.training` instead, which keeps
    only the positions of the usable records."""
    data = open_role(catalog, role)
    records, quarantine = [], []
    for i in range(len(data)):
        try:
            records.append(data.located(i))
        except Quarantined as exc:
            quarantine.append(exc.row)
    return records, quarantine


def open_role(catalog: Catalog, role: str) -> RoleData:
    """The records of `role` across its sources, indexed lazily (on the first len() or access)."""
    return RoleData(role, [SourceData(s, role) for s in catalog.sources(role)])
