"""Record images: located under a source's image root (local folder or s3://), fetched per batch.

Why per batch and through `sicog.store`: an image root may hold hundreds of GB; a reader fetches
exactly the images of the records it is about to use (`store.read_bytes`, so the same code reads a
laptop folder and a bucket), and never copies or lists the folder. Images inside a Hugging Face
dataset come as bytes from the (memory-mapped) dataset instead.

Checks (the same policy as `sicog.records.check_image`, on bytes): absolute paths and paths that
escape the root are refused before any I/O; a missing file, a file PIL cannot decode and an image
over `records.MAX_IMAGE_PIXELS` (checked from the header, before decoding: a decompression bomb
never allocates its pixels) raise `Quarantined` with a stable reason.
"""

from __future__ import annotations

import functools
import io
import posixpath
from pathlib import Path

from PIL import Image

from sicog import store
from sicog.data.normalize import Quarantined
from sicog.records import MAX_IMAGE_PIXELS, resolve_image


def image_uri(root: str, rel: str) -> str:
    """The URI of image `rel` under `root`, or Quarantined for an absolute or escaping path."""
    if store.is_remote(root):
        norm = posixpath.normpath(rel)
        if rel.startswith("/"):
            raise Quarantined("image path is absolute", rel)
        if norm == ".." or norm.startswith("../"):
            raise Quarantined("image path escapes the data root", rel)
        return store.join(root, norm)
    try:
        return str(resolve_image(rel, store.local_path(root)))  # also follows symlinks out of the root
    except ValueError as exc:
        reason, _, detail = str(exc).partition(": ")
        raise Quarantined(reason, detail) from None


def read_image_bytes(uri: str) -> bytes:
    try:
        return store.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise Quarantined("image not found", uri.rsplit("/", 1)[-1]) from None


def decode_image(data: bytes) -> Image.Image:
    """A decoded image (mode and `format` as stored: convert to RGB for a model), or Quarantined."""
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise Quarantined("image over the pixel limit", f"{w}x{h} > {MAX_IMAGE_PIXELS} pixels")
        im.load()
        return im
    except Quarantined:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own, larger limit, hit while opening
        raise Quarantined("image over the pixel limit", str(exc)[:200]) from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise Quarantined("corrupt image", type(exc).__name__) from None


# An image stored inside a local Hugging Face dataset, as a record's image URI: `hf-row:<folder>#<row>`.
EMBEDDED = "hf-row:"


def embedded_image_uri(dataset_path: str | Path, row: int) -> str:
    return f"{EMBEDDED}{dataset_path}#{row}"


@functools.lru_cache(maxsize=8)
def _hf_rows(path: str):
    from sicog.data.formats import HFRows  # memory-mapped: opening is cheap, rows are read on demand

    return HFRows(Path(path))


def open_image(image: str, root: str | Path | None = None) -> Image.Image:
    """A record's image as RGB, or `Quarantined` (a ValueError) naming why it cannot be used (see image_data)."""
    with decode_image(image_data(image, root)) as im:
        return im.convert("RGB")


def image_data(image: str, root: str | Path | None = None) -> bytes:
    """A record's image file as stored, once it decodes within the pixel limit; else `Quarantined`.

    `image` is either a path relative to `root` (checked: no absolute path, no escape from the root),
    or the URI that `read_role` made of a catalog record's image after those same checks: s3://,
    file:// (a bare absolute path stays refused: it is what an untrusted record would hold), or an
    `hf-row:` reference into a Hugging Face dataset. So the
    sampler, the trainer and the evaluator read a user's bucket, a laptop folder and the demo world
    the same way, one image at a time."""
    if image.startswith(EMBEDDED):
        path, _, row = image[len(EMBEDDED) :].rpartition("#")
        cell = _hf_rows(path).row(int(row)).get("image")
        if not isinstance(cell, dict) or cell.get("bytes") is None:
            raise Quarantined("image not found", image)
        data = cell["bytes"]
    elif store.is_remote(image) or image.startswith("file://"):
        data = read_image_bytes(image)
    elif root is None:
        raise Quarantined("relative image path without an image root", image)
    else:
        data = read_image_bytes(image_uri(str(root), image))
    decode_image(data).close()
    return data
