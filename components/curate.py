"""Component: step 3b, curated training data and curation quality against ground truth."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def curate(config: dict, world: Input[Dataset], scored: Input[Dataset], curated: Output[Dataset], work_uri: str = ""):
    """Output: curated.jsonl (stage-1.5 data with provenance), uncurated.jsonl (ablation),
    rejected.jsonl and curation.json (quality per task)."""
    from sicog import steps, store

    with store.published_artifact(curated.path, work_uri, "curate") as published:
        quality = steps.curate(config, world.path, [scored.path], curated.path)
    for task, q in quality.items():
        curated.metadata[f"{task}_kept"] = q.get("kept")
    curated.metadata["store_uri"] = published or curated.path  # where PyTorchJobs and later cycles read it
