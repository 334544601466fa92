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

import io
import posixpath

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
