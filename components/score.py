"""Component: step 3a, self-consistency scores and the keep decision per instance (all tasks)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def score(
    config: dict, caption_candidates: Input[Dataset], vqa_candidates: Input[Dataset], text_candidates: Input[Dataset], scored: Output[Dataset], scorer: str = ""
):
    """Input: candidates of each task. Output: scored.jsonl (scores, best, kept) and rejected.jsonl
    (reasons). One component, so the embedding model loads once per cycle. `scorer`: HOST:PORT of
    the shared scorer service to embed with (empty: the config's curate.scorer, else in-process)."""
    from sicog.steps import StepIO
    from sicog.steps.score import score as run

    paths = [caption_candidates.path, vqa_candidates.path, text_candidates.path]
    figures = run(config, StepIO("score", scored.path, {"candidates": paths}), scorer=scorer or None)
    for task, f in figures.items():
        scored.metadata[f"{task}_kept"] = f["kept"]
        scored.metadata[f"{task}_instances"] = f["instances"]
