"""Component: step 2, sample candidates for one task's unlabeled pool."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def sample(config: dict, task: str, model: Input[Model], world: Input[Dataset], candidates: Output[Dataset]):
    """Input: the sampling model (perception for captions, reasoning for VQA, base for text).
    Output: candidates.jsonl (ids, formats, per-candidate seeds) and failures with reasons."""
    from sicog import steps

    stats = steps.sample(config, task, model.path, world.path, candidates.path)
    candidates.metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
