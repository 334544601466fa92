"""The demo world as a data catalog: the same files a user's datasets would be, one role each.

The world writes one mixed `base.jsonl` (DD captions, DA questions, text-only QA) and one mixed
`annotated.jsonl` (DD, CoD, DA, CoT). A catalog points each role at role-specific records, so next
to them this writes `align.jsonl` (the base captions: stage 1 pairs images with captions),
`perception.jsonl` (annotated DD + CoD) and `reasoning.jsonl` (annotated DA + CoT), selected by
`meta.task` / `meta.format` exactly as `sicog.data.training.training_records` selects them, in file order;
then `catalog.yaml` with paths relative to the world folder. The world's own files (and its
manifest) are left as they are: same content, same seeds.

Every source is named `world`: the world's ids are unique across its files, and one namespace
keeps truth ids (`world/pool-img-00000`) joined with the pool ids they label.
"""

from __future__ import annotations

from pathlib import Path

from sicog.data.catalog import Catalog, Source, dump_catalog, load_catalog
from sicog.records import read_jsonl, write_jsonl

ROLE_FILES = {
    "align": ("base.jsonl", lambda meta: meta.get("task") == "caption"),
    "perception": ("annotated.jsonl", lambda meta: meta.get("format") in ("dd", "cod")),
    "reasoning": ("annotated.jsonl", lambda meta: meta.get("format") in ("da", "cot")),
}
DIRECT = {"instruct": "base.jsonl", "pool_images": "pool_images.jsonl", "pool_vqa": "pool_vqa.jsonl",
          "pool_text": "pool_text.jsonl", "truth": "truth.jsonl", "heldout": "heldout.jsonl"}  # fmt: skip


def world_catalog(world_dir: str | Path, images: str = ".") -> Catalog:
    """Write the world's per-role files and `catalog.yaml` into `world_dir`; return the loaded catalog.

    `images`: where the world's images are read from; "." (the catalog's folder) locally, the world's
    durable store URI when the run publishes it there, so a pod reads images from the store one batch
    at a time instead of relying on a folder another pod downloaded."""
    world = Path(world_dir)
    sources = {role: name for role, name in DIRECT.items()}
    for role, (split, keep) in ROLE_FILES.items():
        write_jsonl(world / f"{role}.jsonl", (r for r in read_jsonl(world / split) if keep(r.get("meta", {}))))
        sources[role] = f"{role}.jsonl"
    catalog = Catalog(**{role: [Source(uri=name, name="world", images=images, format="jsonl")] for role, name in sources.items()})
    (world / "catalog.yaml").write_text(dump_catalog(catalog), encoding="utf-8")
    return load_catalog(world / "catalog.yaml")
