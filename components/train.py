"""Component: one training stage (step 1 warm-up, or stage 1 / 1.5 / 2 of step 4)."""

from kfp import dsl
from kfp.dsl import Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def train(config: dict, stage: str, data: str, name: str, model: str, world: str, trained: Output[Model], curated: str = "") -> str:
    """Input: URIs (upstream tasks' return values) of the model, the world and, for stage 1.5, the
    curated data: read where they are, so a task that only launches a cluster job downloads nothing.
    `stage` warmup is step 1 (`data`: perception | reasoning; with train.step1=dpo, DPO pairs first),
    else a stage of sicog.train.request.STAGES on a training-data name of sicog.data.training.TRAIN_DATA.
    Output: the trained model with its lineage, written once at this artifact's URI (by torchrun's rank 0
    in this pod, or by a TrainJob's / PyTorchJob's rank 0 on a cluster); the local folder stays
    empty. Returns that URI: what later training tasks and a served engine read."""
    import os

    from sicog.steps import StepIO
    from sicog.steps.train import train as train_stage
    from sicog.steps.warmup import warmup

    os.makedirs(trained.path, exist_ok=True)  # KFP uploads this folder afterwards: it must exist
    io = StepIO(f"train:{name}", trained.uri, {"model": model, "world": world, "curated": curated or None})
    result = warmup(config, io, data) if stage == "warmup" else train_stage(config, io, stage, data)
    trained.metadata.update(result["figures"])
    return trained.uri
