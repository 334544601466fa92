"""Component: the cycle's starting model: a fresh tiny LLaVA for the demo, or `model.start` from the store."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def init_model(config: dict, world: Input[Dataset], model: Output[Model], work_uri: str = ""):
    """Input: the world (its text trains a fresh model's tokenizer). Output: model + processor: random weights,
    or a copy of `model.start` (an assembled base model, or the last cycle's model in a series)."""
    from sicog import steps, store

    with store.published_artifact(model.path, work_uri, "model") as published:
        steps.init_model(config, world.path, model.path)
    model.metadata["store_uri"] = published or model.path  # where PyTorchJobs and later cycles read it
