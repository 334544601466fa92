"""Component: step 3a, self-consistency scores and the keep decision per instance."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def score(config: dict, task: str, candidates: Input[Dataset], scored: Output[Dataset]):
    """Input: candidates. Output: scored.jsonl (scores, best, kept) and rejected.jsonl (reasons)."""
    from sicog import steps

    figures = steps.score(config, candidates.path, scored.path)
    scored.metadata.update({"task": task, **{k: v for k, v in figures.get(task, {}).items() if isinstance(v, (int, float, str))}})
