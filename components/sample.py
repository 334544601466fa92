"""Components: step 2, sample one shard of a task's unlabeled pool; collect a task's shards."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def sample_shard(
    config: dict, task: str, shard: int, work_uri: str, world: Input[Dataset], sampled: Output[Dataset], model: Input[Model] = None, server: dict = {}
):
    """Input: the sampling model (perception for captions, reasoning for VQA, the backbone LLM for text),
    or the run's server of that model (`server`, from launch_server: no model is downloaded), and shard i.
    Output: the shard's chunks under work_uri/sampling/<task>/shard-<i> (where a re-run resumes them,
    chunk by chunk); this artifact holds the shard's figures."""
    from sicog.steps import StepIO
    from sicog.steps.sample import sample_shard as run

    shard = int(shard)  # KFP hands loop items over as numbers, maybe 0.0
    inputs = {"world": world.path, "model": model.path if model is not None else None}
    stats = run(config, StepIO(f"sample:{task}:shard-{shard:05d}", sampled.path, inputs), task, shard, work_uri, server or None)
    sampled.metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})


@dsl.component(base_image=IMAGE)
def collect_candidates(config: dict, task: str, work_uri: str, candidates: Output[Dataset]):
    """Input: every shard of one task, where the shard tasks keep them (work_uri/sampling/<task>).
    Output: candidates.jsonl (ids, formats, per-candidate seeds) and failures with reasons."""
    from sicog.steps import StepIO
    from sicog.steps.sample import collect

    stats = collect(config, StepIO(f"collect:{task}", candidates.path), task, work_uri)
    candidates.metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
