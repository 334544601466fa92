"""Where step inputs and outputs live, addressed by URI.

Steps take and return URIs so the same code runs on a laptop and on a cluster. This release resolves
local paths and `file://` URIs (what `kfp.local` and KFP's mounted artifact paths give a component);
object-store URIs (`s3://`) are refused with a clear message rather than mis-read as a relative path.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


class StoreError(ValueError):
    """A URI this store cannot serve (reported as one line)."""


def local_path(uri: str | Path) -> Path:
    """The local filesystem path behind a URI."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme == "file" else text)
    raise StoreError(f"store: URI scheme {parsed.scheme}:// is not supported here (use a local path or file://)")
