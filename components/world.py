"""Component: the cycle's data: the user's catalog (`data.catalog`), or the procedural demo world with
a catalog of its own files."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def make_world(config: dict, world: Output[Dataset]) -> str:
    """Output: a folder with catalog.yaml (and, without a user catalog, the world's files) that every
    later step reads its roles from. Returns its URI (what training jobs read)."""
    from sicog.steps import StepIO
    from sicog.steps.world import make_world as run

    # The world's images are read from the artifact's own URI: on a cluster, one batch at a time from the store.
    manifest = run(config, StepIO("world", world.path), images=world.uri)
    for split, count in manifest.get("counts", {}).items():  # world splits, or catalog roles
        world.metadata[split] = count
    return world.uri
