"""Component: one training stage (step 1 warm-up, or step 4 stage 1 / 1.5 / 2)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def train(
    config: dict,
    stage: str,
    data: str,
    name: str,
    model: Input[Model],
    world: Input[Dataset],
    trained: Output[Model],
    curated: Input[Dataset] = None,
):
    """Input: a model and the data named by `data` (see sicog.steps.TRAIN_DATA). Output: the trained
    model with its lineage (every stage it went through, with loss history)."""
    from sicog import steps

    log = steps.train(config, stage, data, model.path, world.path, trained.path, name, curated.path if curated else None)
    trained.metadata.update({"stage": stage, "data": data, "steps": log["steps"], "final_loss": log["loss_history"][-1][1] if log["loss_history"] else None})
