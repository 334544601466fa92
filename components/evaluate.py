"""Component: held-out evaluation of the cycle's models."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def evaluate(
    config: dict,
    world: Input[Dataset],
    base: Input[Model],
    cycle: Input[Model],
    control: Input[Model],
    evaluation: Output[Dataset],
    scores: Output[Metrics],
    uncurated: Input[Model] = None,
    work_uri: str = "",
):
    """Output: predictions per model and eval.json (VQA exact match, caption attribute recall, lineage)."""
    from sicog import steps, store

    models = {"base": base.path, "cycle": cycle.path, "control": control.path}
    if uncurated is not None:
        models["uncurated"] = uncurated.path
    with store.published_artifact(evaluation.path, work_uri, "evaluate"):
        results = steps.evaluate(config, models, world.path, evaluation.path)
    for name, result in results.items():
        # Every score (held-out and benchmark: one flat schema), not the counts: the compare-runs table.
        for key, value in steps.heldout_scores(result).items():
            if value is not None:
                scores.log_metric(f"{name}_{key}", value)
