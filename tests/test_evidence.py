"""The evidence config's retraining path: stage 1.5 on the pool's true labels (the oracle) raises held-out
VQA accuracy over the base model.

configs/evidence.yaml is the regime where the pool carries what the labeled set lacks (README, "Evidence
that the loop can improve a model"). This runs its oracle arm at reduced size on one seed through the
cycle's own steps, as the pipeline's tasks call them (sicog.steps: world, starting model, the train step
with its default backend (torchrun), curate, evaluate): stage 1 -> stage 2 is the base model; stage 1 ->
stage 1.5 on `oracle` (the curate step's oracle.jsonl: this cycle's pool with its true labels) -> stage 2
is the oracle model. A retraining path that loses stage 1.5 (stage 2 from the wrong model, stage 1.5 on
the wrong data, or a stage 2 that undoes it) leaves the oracle level with the base and fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sicog.config import load_config
from sicog.records import read_jsonl
from sicog.steps import StepIO
from sicog.steps.score import REJECTED_FILE, SCORED_FILE

EVIDENCE = Path(__file__).resolve().parents[1] / "configs" / "evidence.yaml"
# The evidence world and budgets at reduced size: fewer held-out images, a smaller pool, fewer steps; the labeled
# set and the shift are the config's own.
REDUCED = [
    "world.n_annotated=40",
    "world.n_heldout=60",
    "world.n_pool_images=40",
    "world.n_pool_text=40",
    "train.instruct.max_steps=120",
    "train.pretrain.max_steps=80",
]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # five short training stages and two evaluations: ~6 min on 2 idle cores, more when loaded
def test_stage_one_point_five_on_the_oracle_labels_beats_the_base_model(tmp_path):
    from sicog.steps.curate import curate
    from sicog.steps.evaluate import evaluate
    from sicog.steps.model import init_model
    from sicog.steps.train import train
    from sicog.steps.world import make_world

    cfg = load_config(EVIDENCE, REDUCED)
    world, fresh = tmp_path / "world", tmp_path / "fresh"
    make_world(cfg, StepIO("world", str(world)))
    init_model(cfg, StepIO("starting model", str(fresh), {"world": str(world)}))

    def stage(name: str, kind: str, data: str, model: Path, curated: Path | None = None) -> Path:
        out = tmp_path / name.replace("/", "-")
        inputs = {"model": str(model), "world": str(world), **({"curated": str(curated)} if curated else {})}
        train(cfg, StepIO(f"train:{name}", str(out), inputs), kind, data)
        return out

    align = stage("stage1/align", "align", "align", fresh)
    base = stage("base/instruct", "instruct", "base", align)

    # The curate step writes the oracle from the world's pool and truth, whatever sampling kept.
    scored = tmp_path / "scored"
    scored.mkdir()
    (scored / SCORED_FILE).write_text("")
    (scored / REJECTED_FILE).write_text("")
    curated = tmp_path / "curated"
    curate(cfg, StepIO("curate", str(curated), {"world": str(world), "scored": [str(scored)]}))
    oracle_rows = list(read_jsonl(curated / "oracle.jsonl"))
    assert len(oracle_rows) == cfg.world.n_pool_images + cfg.world.n_pool_vqa + cfg.world.n_pool_text

    oracle = stage("oracle/instruct", "instruct", "base", stage("oracle/pretrain", "pretrain", "oracle", align, curated))
    results = evaluate(cfg, StepIO("evaluate", str(tmp_path / "eval"), {"world": str(world), "models": {"base": str(base), "oracle": str(oracle)}}))
    assert [s["name"] for s in results["oracle"]["lineage"]] == ["stage1/align", "oracle/pretrain", "oracle/instruct"]
    base_vqa, oracle_vqa = results["base"]["vqa_accuracy"], results["oracle"]["vqa_accuracy"]
    print(f"held-out VQA accuracy: base {base_vqa:.3f}, oracle {oracle_vqa:.3f}")
    assert oracle_vqa > base_vqa
