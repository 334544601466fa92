"""Component: one training stage (step 1 warm-up, or step 4 stage 1 / 1.5 / 2)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def train(
    config: dict,
    stage: str,
    data: str,
    name: str,
    model: Input[Model],
    world: Input[Dataset],
    trained: Output[Model],
    curated: Input[Dataset] = None,
    work_uri: str = "",
) -> str:
    """Input: a model and the data named by `data` (see sicog.steps.TRAIN_DATA; with train.step1=dpo the
    warm-up makes its DPO pairs first and trains DPO + SFT).
    Output: the trained model with its lineage (every stage it went through, with loss history).
    Runs the `sicog train` entry point under torchrun (train.nproc ranks) in this pod, or, with
    cluster.trainer pytorchjob, as a PyTorchJob that reads the inputs at their `store_uri`s.
    Returns where the trained model is kept (its store URI): what a served engine's server loads."""
    from sicog import steps

    inputs = {"model": model, "world": world, "curated": curated}
    uris = {key: artifact.metadata.get("store_uri", "") for key, artifact in inputs.items() if artifact is not None}
    log, published = steps.train_task(config, stage, data, name, model.path, world.path, trained.path,
                                      curated.path if curated else None, work_uri, uris)
    trained.metadata.update({"stage": stage, "data": data, "steps": log["steps"], "final_loss": log["loss_history"][-1][1] if log["loss_history"] else None})
    trained.metadata["store_uri"] = published  # where PyTorchJobs and later cycles read it
    return published
