"""Component: the cycle's starting model: a fresh tiny LLaVA for the demo, or `model.start` from the store."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def init_model(config: dict, world: Input[Dataset], model: Output[Model]) -> str:
    """Input: the world (its text trains a fresh model's tokenizer). Output: a fresh model + processor.
    Returns the starting model's URI: this artifact's, or `model.start` as it is (an assembled base
    model, or the last cycle's model in a series: read where it is, never copied)."""
    from sicog.steps import StepIO
    from sicog.steps.model import init_model as run

    start = run(config, StepIO("model-init", model.path, {"world": world.path}))
    model.metadata["start"] = start or "fresh"
    return start or model.uri
