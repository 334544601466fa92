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
    oracle: Input[Model] = None,
):
    """Output: predictions per model and eval.json (held-out and benchmark scores, lineage); every score
    also as a KFP metric `<model>_<metric>`, the compare-runs table."""
    from sicog.report.metrics import heldout_scores
    from sicog.steps import StepIO
    from sicog.steps.evaluate import evaluate as run

    models = {"base": base.path, "cycle": cycle.path, "control": control.path}
    if uncurated is not None:
        models["uncurated"] = uncurated.path
    if oracle is not None:
        models["oracle"] = oracle.path
    results = run(config, StepIO("evaluate", evaluation.path, {"world": world.path, "models": models}))
    for name, result in results.items():
        for key, value in heldout_scores(result).items():
            if value is not None:
                scores.log_metric(f"{name}_{key}", value)
