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
):
    """Input: a model and the data named by `data` (see sicog.steps.TRAIN_DATA; with train.step1=dpo the
    warm-up makes its DPO pairs first and trains DPO + SFT).
    Output: the trained model with its lineage (every stage it went through, with loss history).
    Runs the `sicog train` entry point under torchrun (train.nproc ranks), as a PyTorchJob would."""
    from sicog import steps, store

    with store.published_artifact(trained.path, work_uri, f"train/{name}"):
        log = steps.train_torchrun(config, stage, data, model.path, world.path, trained.path, name,
                                   curated.path if curated else None)
    trained.metadata.update({"stage": stage, "data": data, "steps": log["steps"], "final_loss": log["loss_history"][-1][1] if log["loss_history"] else None})

