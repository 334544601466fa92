"""Raw rows of one source file or folder, by position, after one streaming indexing pass.

Why an index and not `json.load`: LLaVA-558k/665k are hundreds of MB of JSON; holding every record
(let alone its pixels) would make memory grow with the dataset. Each reader makes one pass that
keeps only positions (8-16 bytes per row) and yields each parsed row once, so the caller can derive
ids for duplicate detection without keeping the rows.

- `JsonlRows`: byte offset of every non-blank line; a row is one `seek` + `readline`.
- `JsonArrayRows`: one regex scan over the memory-mapped file (strings are skipped whole, brackets
  counted) records each top-level element's byte span; a row is one positioned read (`os.pread`)
  of its span. A truncated file keeps its complete elements; the cut one becomes a malformed row.
  The scan hands the pages it has passed back every `RELEASE_BYTES` (madvise DONTNEED) and the map
  is closed after it, so the file's pages never count in the process's RSS: a 665k-record LLaVA
  file (~1 GB) would otherwise add its whole size to every rank's peak RSS.
- `HFRows`: a `datasets.save_to_disk` folder or `.arrow` files (memory-mapped arrow through
  `datasets`), or `.parquet` files (read one row group at a time with pyarrow). Image cells stay
  undecoded: `{"bytes", "path"}` dicts, as the `Image` feature stores them.

A row that does not parse is returned as a `Malformed` (never raised out of the pass), so one bad
line costs one quarantine row, not the read.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import mmap
import os
import re
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sicog.errors import UserError


class Malformed(ValueError):
    """A row whose text is not valid JSON; `raw` keeps the start of the text for the quarantine row."""

    def __init__(self, detail: str, raw: str):
        super().__init__(detail)
        self.raw = raw


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Malformed(f"malformed JSON: {getattr(exc, 'msg', exc)}", data[:500].decode("utf-8", "replace"))


class _PerProcessFile:
    """An open file handle that is reopened after a fork (DataLoader workers must not share one offset)."""

    def __init__(self, path: Path):
        self.path, self._fh, self._pid = path, None, None

    def get(self):
        if self._pid != os.getpid():
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        return self._fh


class JsonlRows:
    """One JSON object per line; blank lines are not rows."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets = array("q")
        self._file = _PerProcessFile(path)

    def index(self) -> Iterator[Any]:
        with open(self.path, "rb") as fh:
            pos = 0
            for line in fh:
                if line.strip():
                    self.offsets.append(pos)
                    yield _parse(line)
                pos += len(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def row(self, i: int) -> Any:
        fh = self._file.get()
        fh.seek(self.offsets[i])
        return _parse(fh.readline())


# A JSON string (escapes skipped), an opening or closing bracket, or a bare scalar (number, literal, garbage).
_TOKEN = re.compile(rb'("[^"\\]*(?:\\.[^"\\]*)*")|([\[{])|([\]}])|([^\s,:\[\]{}"]+)')


class JsonArrayRows:
    """The elements of one top-level JSON array (LLaVA's `.json` files)."""

    RELEASE_BYTES = 8 << 20  # scanned pages handed back this often

    def __init__(self, path: Path):
        self.path = path
        self.starts, self.ends = array("q"), array("q")
        self._map = None
        self._file = _PerProcessFile(path)

    def _mmap(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    raise UserError(f"{self.path}: empty file, not a JSON array")
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def index(self) -> Iterator[Any]:
        mm = self._mmap()
        try:
            yield from self._scan(mm)
        finally:
            self._map = None
            with contextlib.suppress(BufferError):  # the scan's iterator still holds it: closed when collected
                mm.close()

    def _release(self, mm: mmap.mmap, upto: int) -> None:
        if hasattr(mmap, "MADV_DONTNEED") and upto > 0:
            mm.madvise(mmap.MADV_DONTNEED, 0, upto - upto % mmap.PAGESIZE)

    def _scan(self, mm: mmap.mmap) -> Iterator[Any]:
        depth, start, released = 0, 0, 0
        for m in _TOKEN.finditer(mm):
            kind = m.lastindex
            if m.start() - released >= self.RELEASE_BYTES:
                released = m.start()
                self._release(mm, released)
            if depth == 0:
                if kind != 2 or mm[m.start()] != ord("["):
                    raise UserError(f"{self.path}: not a JSON array (use format: jsonl for one record per line)")
                depth = 1
                continue
            if kind == 2:
                if depth == 1:
                    start = m.start()
                depth += 1
            elif kind == 3:
                depth -= 1
                if depth == 1:
                    yield self._add(start, m.end())
                elif depth == 0:
                    return
            elif depth == 1:  # a string or scalar element: not an object, quarantined by the caller
                yield self._add(m.start(), m.end())
        if depth > 1:  # truncated inside an element: keep it as one malformed row
            yield self._add(start, len(mm))

    def _add(self, start: int, end: int) -> Any:
        self.starts.append(start)
        self.ends.append(end)
        return _parse(self._map[start:end])

    def __len__(self) -> int:
        return len(self.starts)

    def row(self, i: int) -> Any:
        start = self.starts[i]
        return _parse(os.pread(self._file.get().fileno(), self.ends[i] - start, start))


class _ArrowPart:
    """A memory-mapped arrow table (from `datasets`): slicing one row copies only that row."""

    def __init__(self, table):
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def get(self, i: int) -> dict:
        return self.table.slice(i, 1).to_pylist()[0]

    def column(self, name: str) -> Iterator[Any]:
        for chunk in self.table.column(name).chunks:
            yield from chunk.to_pylist()


class _ParquetPart:
    """One parquet file, read a row group at a time (the last one is kept for sequential reads)."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(path)
        meta = self.file.metadata
        self.starts = [0]
        for g in range(meta.num_row_groups):
            self.starts.append(self.starts[-1] + meta.row_group(g).num_rows)
        self._cached: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def get(self, i: int) -> dict:
        group = bisect.bisect_right(self.starts, i) - 1
        if self._cached is None or self._cached[0] != group:
            self._cached = (group, self.file.read_row_group(group))
        return self._cached[1].slice(i - self.starts[group], 1).to_pylist()[0]

    def column(self, name: str) -> Iterator[Any]:
        for group in range(len(self.starts) - 1):
            yield from self.file.read_row_group(group, columns=[name]).column(0).to_pylist()


class HFRows:
    """A Hugging Face dataset on disk: a save_to_disk folder, or a folder (or file) of .arrow / .parquet files."""

    def __init__(self, path: Path):
        self.path = path
        self.parts = self._parts(path)
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + len(part))
        names = [set(p.table.column_names if isinstance(p, _ArrowPart) else p.file.schema_arrow.names) for p in self.parts]
        self.columns = set.intersection(*names) if names else set()

    @staticmethod
    def _parts(path: Path) -> list:
        import datasets

        if (path / "dataset_dict.json").is_file():
            splits = ", ".join(sorted(p.name for p in path.iterdir() if p.is_dir()))
            raise UserError(f"{path}: a DatasetDict; point the source at one split's folder ({splits})")
        if (path / "state.json").is_file():
            ds = datasets.load_from_disk(str(path), keep_in_memory=False)
            if ds._indices is not None:  # a selected/shuffled view: resolve it once (save_to_disk normally has)
                ds = ds.flatten_indices()
            return [_ArrowPart(ds.data.table)]
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".arrow"))
        if not files:
            raise UserError(f"{path}: no Hugging Face dataset here (no state.json, .parquet or .arrow files)")
        return [_ParquetPart(f) if f.suffix == ".parquet" else _ArrowPart(datasets.Dataset.from_file(str(f)).data.table) for f in files]

    def index(self) -> Iterator[Any]:
        """Only the `id` column (reading whole rows would read every image): ids for duplicate checks."""
        for part in self.parts:
            if "id" in self.columns:
                for value in part.column("id"):
                    yield {"id": value} if value is not None else None
            else:
                yield from (None for _ in range(len(part)))

    def __len__(self) -> int:
        return self.starts[-1]

    def row(self, i: int) -> dict:
        part = bisect.bisect_right(self.starts, i) - 1
        return self.parts[part].get(i - self.starts[part])


def _array_or_lines(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    return "json" if head.startswith(b"[") else "jsonl"


def detect_format(path: Path, declared: str) -> str:
    """The container format of a local file or folder (`auto` decided by name, and by content for .json)."""
    if declared != "auto":
        return declared
    if path.is_dir() or path.suffix in (".parquet", ".arrow"):
        return "hf"
    if path.suffix == ".json":
        return _array_or_lines(path)
    if path.suffix == ".jsonl":
        return "jsonl"
    raise UserError(f"{path}: cannot tell the format from the name; set `format` (json, jsonl, hf, llava-cot)")


def open_rows(path: Path, fmt: str):
    """The reader of a local file or folder in a detected format (llava-cot: JSON array or JSONL, by content)."""
    if fmt == "hf":
        return HFRows(path)
    if not path.is_file():
        raise UserError(f"{path}: not a file (format {fmt} reads one JSON or JSONL file)")
    if fmt == "llava-cot":
        fmt = "jsonl" if path.suffix == ".jsonl" else _array_or_lines(path)
    return JsonArrayRows(path) if fmt == "json" else JsonlRows(path)
