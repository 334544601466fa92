"""The container image every component runs in: the project's own image, which has sicog installed.

Set SICOG_IMAGE when compiling to pin a registry and tag of your own.
"""

import os

IMAGE = os.environ.get("SICOG_IMAGE", "ghcr.io/sicog-project/sicog:0.1.0")
