"""Component: the backbone LLM that answers text-only prompts in step 2 (paper App. A)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def extract_backbone(config: dict, model: Input[Model], backbone: Output[Model], work_uri: str = "") -> str:
    """Input: the base LLaVA. Output: its language model (language_model + lm_head) as a causal-LM
    folder with the tokenizer, or only backbone.json when the config names a separate backbone LLM
    (sample.backbone) or a served engine at sample.endpoint answers the text task.
    Returns the backbone's store URI (sample.backbone, else the extracted folder): what its server loads."""
    from sicog import steps, store

    with store.published_artifact(backbone.path, work_uri, "backbone") as published:
        figures = steps.extract_backbone(config, model.path, backbone.path)
    backbone.metadata["backbone"] = figures["backbone"]
    backbone.metadata["store_uri"] = published or backbone.path
    return steps.as_config(config).sample.backbone or published or backbone.path
