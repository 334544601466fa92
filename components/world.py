"""Component: the cycle's data: the user's catalog (`data.catalog`), or the procedural demo world with
a catalog of its own files."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def make_world(config: dict, world: Output[Dataset], work_uri: str = ""):
    """Input: the cycle config. Output: a folder with catalog.yaml (and the world's files, without a
    user catalog: base, annotated, pools, held-out, truth) that every later step reads its roles from."""
    from sicog import steps, store

    with store.published_artifact(world.path, work_uri, "world") as published:
        # Published: the world's images are read from the store, one batch at a time, by every pod.
        manifest = steps.make_world(config, world.path, images=published or ".")
    for split, count in manifest.get("counts", {}).items():  # world splits, or catalog roles
        world.metadata[split] = count
    world.metadata["store_uri"] = published or world.path  # where PyTorchJobs and later cycles read it
