"""The world step: the cycle's data, as one catalog that every later step reads its roles from.

Input: the config (`data.catalog`: the user's datasets; without it, the procedural demo world).
Output: a folder with `catalog.yaml` (+ `manifest.json`; for the demo world also its images, splits
and ground truth). Figures: record counts per role (or per world split).
Paper: Sec. 3 (the annotated seed sets, the unlabeled pools) and Sec. 4 (held-out evaluation).
"""

from __future__ import annotations

from sicog import store
from sicog.console import progress
from sicog.data import dump_catalog, load_catalog, open_role
from sicog.records import write_json
from sicog.steps._io import StepIO, as_config, open_step


def make_world(config, io: StepIO, images: str = ".") -> dict:
    """With `data.catalog`: that catalog validated, every role opened and counted, and written with
    absolute URIs (nothing is copied). Without: the procedural world and a catalog of its own files;
    `images` is where its images are read from (the world's own store URI on a cluster, so a pod reads
    them one batch at a time)."""
    from sicog.world import build_world, world_catalog

    cfg = as_config(config)
    with open_step(io, cycle=cfg.cycle) as step, progress() as bar:
        if cfg.data.catalog:
            catalog = load_catalog(cfg.data.catalog)
            (step.out / "catalog.yaml").write_text(dump_catalog(catalog), encoding="utf-8")
            manifest = {"catalog": cfg.data.catalog, "counts": {role: len(open_role(catalog, role)) for role in catalog.roles()}}
            write_json(step.out / "manifest.json", manifest)
        else:
            manifest = build_world(step.out, cfg.world, progress=bar)
            world_catalog(step.out, images=images if store.is_remote(images) else ".")
        step.figures["counts"] = manifest.get("counts", {})
    return manifest
