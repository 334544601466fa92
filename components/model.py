"""Component: a fresh tiny LLaVA (CLIP-style tower + projector + Qwen2-style LM) for the demo."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def init_model(config: dict, world: Input[Dataset], model: Output[Model], work_uri: str = ""):
    """Input: the world (its text trains the tokenizer). Output: random-weight model + processor."""
    from sicog import steps, store

    with store.published_artifact(model.path, work_uri, "model"):
        steps.init_model(config, world.path, model.path)
