"""Component: the backbone LLM that answers text-only prompts in step 2 (paper App. A)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def extract_backbone(config: dict, model: Input[Model], backbone: Output[Model]) -> str:
    """Input: the base LLaVA. Output: its language model as a causal-LM folder with the tokenizer, or
    only backbone.json when sample.backbone or a served engine at sample.endpoint answers the text task.
    Returns the backbone's URI (sample.backbone, else this artifact's): what its server loads."""
    from sicog.steps import StepIO
    from sicog.steps._io import as_config
    from sicog.steps.model import extract_backbone as run

    figures = run(config, StepIO("extract-backbone", backbone.path, {"model": model.path}))
    backbone.metadata["backbone"] = figures["backbone"]
    return as_config(config).sample.backbone or backbone.uri
