"""The SICOG cycle as one KFP pipeline: the same definition runs under `kfp.local` and on Kubeflow.

It reads like the paper's Figure 2, plus the controls that make the demo honest:
  world -> tiny model -> stage 1 (align) -> stage 2 (base model)
  step 1: warm-up -> perception model (DD + CoD), reasoning model (DA + CoT)
  step 2: sample candidates (captions, VQA, text-only)       step 3: score + curate
  step 4: stage 1.5 on curated data -> stage 2 (cycle model)
  control: stage 1.5 on labeled data, same steps -> stage 2;  ablation (optional): uncurated data
  evaluate base / cycle / control (/ uncurated) on the held-out split -> report
"""


from kfp import dsl

from sicog.components.curate import curate
from sicog.components.evaluate import evaluate
from sicog.components.model import init_model
from sicog.components.report import report
from sicog.components.sample import collect_candidates, sample_shard
from sicog.components.score import score
from sicog.components.train import train
from sicog.components.world import make_world

TASKS = ("caption", "vqa", "text")


def _train(common: dict, stage: str, data: str, name: str, model, world, curated=None):
    kwargs = {"curated": curated} if curated is not None else {}
    task = train(**common, stage=stage, data=data, name=name, model=model, world=world, **kwargs)
    return task.set_display_name(f"train {name}")


def _retrain(common: dict, label: str, data: str, align, world, curated=None):
    """Step 4 after stage 1: stage 1.5 on `data`, then stage 2 on the instruction data."""
    pretrain = _train(common, "pretrain", data, f"{label}/pretrain", align.outputs["trained"], world, curated)
    return _train(common, "instruct", "base", f"{label}/instruct", pretrain.outputs["trained"], world)


@dsl.pipeline(name="sicog-cycle", description="One SICOG self-improvement cycle (arXiv 2503.12303) with its controls.")
def sicog_cycle(config: dict, ablations: bool = False, publish_uri: str = "", work_uri: str = "", scorer: str = "",
                sample_shards: list = [0, 1]):
    # work_uri: the run's durable location in the store (local folder or s3://); every step keeps its
    # output there (see sicog.store.published_artifact) and sampling resumes its shards from it.
    common = dict(config=config, work_uri=work_uri)
    world = make_world(**common).set_display_name("world").outputs["world"]
    fresh = init_model(**common, world=world).set_display_name("tiny model").outputs["model"]

    # Base model, as in the paper's Table 1 baseline: stage 1 + stage 2.
    align = _train(common, "align", "align", "stage1/align", fresh, world)
    base = _train(common, "instruct", "base", "base/instruct", align.outputs["trained"], world)

    # Step 1: systematic cognition from minimal annotations.
    perception = _train(common, "warmup", "perception", "perception/warmup", base.outputs["trained"], world)
    reasoning = _train(common, "warmup", "reasoning", "reasoning/warmup", base.outputs["trained"], world)

    # Step 2 + 3: candidates per task, then self-consistency.
    samplers = {"caption": perception, "vqa": reasoning, "text": base}
    candidates = {}
    for task in TASKS:
        # Fan-out over shards (sample_shards = range(config sample.shards)); a re-run resumes each
        # shard's finished chunks from work_uri; the collect step fails if a shard is missing.
        with dsl.ParallelFor(items=sample_shards, name=f"sample-{task}-shards") as shard:
            sampled = sample_shard(**common, task=task, shard=shard, model=samplers[task].outputs["trained"], world=world)
            sampled.set_display_name(f"sample {task} shard").set_caching_options(False)
        collected = collect_candidates(**common, task=task, shards=dsl.Collected(sampled.outputs["sampled"]))
        candidates[task] = collected.set_display_name(f"collect {task}").set_caching_options(False).outputs["candidates"]
    scored = score(
        **common,
        caption_candidates=candidates["caption"],
        vqa_candidates=candidates["vqa"],
        text_candidates=candidates["text"],
        scorer=scorer,  # HOST:PORT of the shared scorer service; empty: config's curate.scorer, else in-process
    ).set_display_name("score")
    curated = curate(**common, world=world, scored=scored.outputs["scored"]).set_display_name("curate").outputs["curated"]

    # Step 4: the next-generation model, and the compute-matched control.
    cycle = _retrain(common, "cycle", "curated", align, world, curated)
    control = _retrain(common, "control", "labeled", align, world)
    models = dict(**common, world=world, base=base.outputs["trained"], cycle=cycle.outputs["trained"], control=control.outputs["trained"])
    report_args = dict(**common, world=world, curated=curated, perception=perception.outputs["trained"],
                       reasoning=reasoning.outputs["trained"], publish_uri=publish_uri)

    with dsl.If(ablations == True, name="with-ablation"):  # noqa: E712 (KFP conditions compare explicitly)
        uncurated = _retrain(common, "uncurated", "uncurated", align, world, curated)
        evaluation = evaluate(**models, uncurated=uncurated.outputs["trained"]).set_display_name("evaluate")
        report(**report_args, evaluation=evaluation.outputs["evaluation"]).set_display_name("report")
    with dsl.Else(name="without-ablation"):
        evaluation = evaluate(**models).set_display_name("evaluate")
        report(**report_args, evaluation=evaluation.outputs["evaluation"]).set_display_name("report")
