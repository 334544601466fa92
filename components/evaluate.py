"""Component: held-out evaluation of one model."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def evaluate(config: dict, name: str, model: Input[Model], world: Input[Dataset], evaluation: Output[Dataset], scores: Output[Metrics]):
    """Output: predictions and eval.json (VQA exact match, caption attribute recall, lineage)."""
    from sicog import steps

    result = steps.evaluate(config, model.path, world.path, evaluation.path, name)
    for key in ("vqa_accuracy", "caption_attribute_recall"):
        if result.get(key) is not None:
            scores.log_metric(key, result[key])
