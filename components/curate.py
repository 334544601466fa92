"""Component: step 3b, curated training data and curation quality against ground truth."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def curate(config: dict, world: Input[Dataset], scored: Input[Dataset], curated: Output[Dataset]) -> str:
    """Output: curated.jsonl (stage-1.5 data with provenance), uncurated.jsonl (ablation),
    rejected.jsonl and curation.json (quality per task). Returns its URI (what training jobs read)."""
    from sicog.steps import StepIO
    from sicog.steps.curate import curate as run

    quality = run(config, StepIO("curate", curated.path, {"world": world.path, "scored": [scored.path]}))
    for task, q in quality.items():
        curated.metadata[f"{task}_kept"] = q.get("kept")
    return curated.uri
