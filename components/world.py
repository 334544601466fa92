"""Component: write the procedural demo world (images, splits, ground truth)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def make_world(config: dict, world: Output[Dataset], work_uri: str = ""):
    """Input: the cycle config. Output: the world folder (base, annotated, pools, held-out, truth)."""
    from sicog import steps, store

    with store.published_artifact(world.path, work_uri, "world") as published:
        manifest = steps.make_world(config, world.path)
    for split, count in manifest.get("counts", {}).items():
        world.metadata[split] = count
    world.metadata["store_uri"] = published or world.path  # where PyTorchJobs and later cycles read it
