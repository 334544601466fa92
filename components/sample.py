"""Components: step 2, sample one shard of a task's unlabeled pool; collect a task's shards."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def sample_shard(config: dict, task: str, shard: int, world: Input[Dataset], sampled: Output[Dataset], work_uri: str = "",
                 model: Input[Model] = None, server: dict = {}):
    """Input: the sampling model (perception for captions, reasoning for VQA, the backbone LLM for text),
    or the run's server of that model (`server`, from launch_server: the model is not downloaded), and shard i.
    Output: the shard's chunks and manifest under work_uri/sampling/<task>/shard-<i> (in this artifact
    when work_uri is empty), resumed chunk by chunk when the task is re-run; shard.json points at them."""
    from sicog import steps

    stats = steps.sample(config, task, model.path if model is not None else None, world.path, sampled.path, shard=shard,
                         work=work_uri or None, server=server or None)
    sampled.metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})


@dsl.component(base_image=IMAGE)
def collect_candidates(config: dict, task: str, shards: Input[List[Dataset]], candidates: Output[Dataset], work_uri: str = ""):
    """Input: every shard of one task (dsl.Collected over the fan-out).
    Output: candidates.jsonl (ids, formats, per-candidate seeds) and failures with reasons."""
    from sicog import steps, store

    with store.published_artifact(candidates.path, work_uri, f"sample/{task}"):
        stats = steps.collect_samples(config, task, [s.path for s in shards], candidates.path)
    candidates.metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})


@dsl.component(base_image=IMAGE)
def collect_stored(config: dict, task: str, work_uri: str, candidates: Output[Dataset]):
    """Collect a task's shards from where they keep their chunks (work_uri/sampling/<task>), for the
    served sampling group, whose tasks no task outside its exit handler may take artifacts from.
    Output: as collect_candidates."""
    from sicog import steps, store

    with store.published_artifact(candidates.path, work_uri, f"sample/{task}"):
        stats = steps.collect_stored(config, task, work_uri, candidates.path)
    candidates.metadata.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
