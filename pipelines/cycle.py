"""The SICOG cycle as one KFP pipeline: the same definition runs under `kfp.local` and on Kubeflow.

It reads like the paper's Figure 2, plus the controls that make the demo honest:
  world -> tiny model -> stage 1 (align) -> stage 2 (base model)
  step 1: warm-up -> perception model (DD + CoD), reasoning model (DA + CoT)
  step 2: sample candidates (captions, VQA; text-only from the backbone LLM)   step 3: score + curate
  step 4: stage 1.5 on curated data -> stage 2 (cycle model)
  control: stage 1.5 on labeled data, same steps -> stage 2;  ablation (optional): uncurated data
  evaluate base / cycle / control (/ uncurated) on the held-out split -> report -> lineage

`cycle_pipeline(config)` returns the pipeline with the cluster placement of `config.cluster` baked in
(node selectors, GPUs, secrets, retries: see placement.py); `cycle_pipeline()` is the same DAG for
kfp.local. Run-time parameters stay parameters: the config dict, the series, work_uri, scorer, shards.
With a served `sample.engine` and no `sample.endpoint`, the compiled pipeline deploys a server per
sampling model for its sampling group only (see served_sample_task); that choice is made at compile time.
"""


from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Model

from sicog.components.backbone import extract_backbone
from sicog.components.curate import curate
from sicog.components.evaluate import evaluate
from sicog.components.model import init_model
from sicog.components.report import report
from sicog.components.sample import collect_candidates, collect_stored, sample_shard
from sicog.components.score import score
from sicog.components.serve import delete_server, launch_server
from sicog.components.start import start_cycle
from sicog.components.train import train
from sicog.components.world import make_world
from sicog.config import ClusterConfig, SicogConfig
from sicog.pipelines.placement import place

TASKS = ("caption", "vqa", "text")


def served_sampling(cluster: ClusterConfig | None):
    """The sampling group of one task on a served engine deployed for the run (sample.engine tgi | vllm |
    sglang, no sample.endpoint): launch the server of the task's model, sample its shards from it,
    delete it on exit whatever happened, then collect the shards from work_uri."""

    @dsl.pipeline(name="sample-shards", description="Step 2 for one task from the run's server of its model: the pool's shards in parallel.")
    def shard_fanout(config: dict, work_uri: str, task: str, sample_shards: list, server: dict, world: Dataset):
        with dsl.ParallelFor(items=sample_shards, name="shards") as shard:
            sampled = sample_shard(config=config, work_uri=work_uri, task=task, shard=shard, server=server, world=world)
            place(sampled.set_display_name("sample shard"), cluster, cache=False, transient=True)

    @dsl.pipeline(name="served-sample-task", description="Step 2 for one task on a server deployed for this run and model, deleted on exit.")
    def served_sample_task(config: dict, work_uri: str, task: str, sample_shards: list, role: str, model_uri: str, run_id: str,
                           world: Dataset) -> Dataset:
        # The exit handler deletes the server whether sampling succeeded or failed (and sicog.cluster.serving
        # sweeps what it missed). The fan-out sits in its own sub-pipeline: KFP's backend does not run a
        # ParallelFor placed directly in an ExitHandler (kubeflow/pipelines#12390). No task outside the
        # handler may take artifacts from inside it, so the shards are collected from work_uri, after it.
        teardown = place(delete_server(config=config, run_id=run_id, role=role).set_display_name("delete server"), cluster, cache=False)
        with dsl.ExitHandler(teardown, name="serving") as serving:
            server = place(launch_server(config=config, run_id=run_id, role=role, model_uri=model_uri).set_display_name("launch server"),
                           cluster, cache=False)
            shard_fanout(config=config, work_uri=work_uri, task=task, sample_shards=sample_shards, server=server.output, world=world)
        collected = collect_stored(config=config, work_uri=work_uri, task=task).after(serving)
        return place(collected.set_display_name("collect"), cluster, cache=False, transient=True).outputs["candidates"]

    return served_sample_task


def cycle_pipeline(compiled_for: SicogConfig | None = None):
    """The cycle pipeline; `compiled_for` (a config with a `cluster` section) places its tasks on a
    cluster, None leaves them unplaced for kfp.local."""
    cluster = compiled_for.cluster if compiled_for is not None else None
    # GPUs per task (used only where cluster.accelerator is set). With trainer=pytorchjob a train task
    # only launches and watches its job; with the remote sampling backend, TGI holds the GPUs.
    train_gpus = compiled_for.train.nproc if cluster is not None and cluster.trainer == "torchrun" else 0
    sample_gpus = 1 if compiled_for is not None and compiled_for.sample.engine == "local" else 0
    eval_gpus = 1  # held-out answers are decoded in the task
    deploy = compiled_for is not None and compiled_for.sample.engine in ("tgi", "vllm", "sglang") and not compiled_for.sample.endpoint
    served_sample_task = served_sampling(cluster) if deploy else None

    def _train(common: dict, stage: str, data: str, name: str, model, world, curated=None):
        kwargs = {"curated": curated} if curated is not None else {}
        task = train(**common, stage=stage, data=data, name=name, model=model, world=world, **kwargs)
        return place(task.set_display_name(f"train {name}"), cluster, cache=True, gpus=train_gpus, transient=True)

    def _evaluate(task):
        """The evaluate task: a GPU task; with eval.benchmarks in the lmms-eval image, with the judge's key."""
        place(task.set_display_name("evaluate"), cluster, cache=True, gpus=eval_gpus)
        if cluster is not None and compiled_for.eval.benchmarks:
            task.set_container_image(cluster.eval_image)
            if cluster.judge_secret:
                key = compiled_for.eval.judge_key_env
                kubernetes.use_secret_as_env(task, secret_name=cluster.judge_secret, secret_key_to_env={key: key})
        return task

    def _retrain(common: dict, label: str, data: str, align, world, curated=None):
        """Step 4 after stage 1: stage 1.5 on `data`, then stage 2 on the instruction data."""
        pretrain = _train(common, "pretrain", data, f"{label}/pretrain", align, world, curated)
        return _train(common, "instruct", "base", f"{label}/instruct", pretrain.outputs["trained"], world)

    @dsl.pipeline(name="sample-task", description="Step 2 for one task: its pool's shards in parallel, then collected.")
    def sample_task(config: dict, work_uri: str, task: str, sample_shards: list, model: Model, world: Dataset) -> Dataset:
        # Fan-out over shards (sample_shards = range(config sample.shards)); a re-run resumes each
        # shard's finished chunks from work_uri; the collect step fails if a shard is missing.
        with dsl.ParallelFor(items=sample_shards, name="shards") as shard:
            sampled = sample_shard(config=config, work_uri=work_uri, task=task, shard=shard, model=model, world=world)
            place(sampled.set_display_name("sample shard"), cluster, cache=False, gpus=sample_gpus, transient=True)
        collected = collect_candidates(config=config, work_uri=work_uri, task=task, shards=dsl.Collected(sampled.outputs["sampled"]))
        return place(collected.set_display_name("collect"), cluster, cache=False, transient=True).outputs["candidates"]

    @dsl.pipeline(name="sicog-cycle", description="One SICOG self-improvement cycle (arXiv 2503.12303) with its controls.")
    def sicog_cycle(config: dict, ablations: bool = False, publish_uri: str = "", work_uri: str = "", scorer: str = "",
                    sample_shards: list = [0, 1], series_uri: str = ""):
        # work_uri: the run's durable location in the store (local folder or s3://); every step keeps its
        # output there (see sicog.store.published_artifact) and sampling resumes its shards from it.
        # series_uri: a store folder shared by recurring runs; the run starts from the series' last
        # successful cycle and, without a work_uri, works in a new folder of the series (sicog.lineage).
        start = start_cycle(config=config, series_uri=series_uri, work_uri=work_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        place(start.set_display_name("start cycle"), cluster, cache=False)
        common = dict(config=start.outputs["config"], work_uri=start.outputs["work_uri"])
        world = place(make_world(**common).set_display_name("world"), cluster, cache=True).outputs["world"]
        fresh = place(init_model(**common, world=world).set_display_name("starting model"), cluster, cache=True).outputs["model"]

        # Base model, as in the paper's Table 1 baseline: stage 1 + stage 2. From a foundation model (a series'
        # previous cycle, paper App. G: model.foundation) both tasks pass it through untrained.
        align = _train(common, "align", "align", "stage1/align", fresh, world).outputs["trained"]
        base = _train(common, "instruct", "base", "base/instruct", align, world).outputs["trained"]

        # Step 1: systematic cognition from minimal annotations.
        perception = _train(common, "warmup", "perception", "perception/warmup", base, world)
        reasoning = _train(common, "warmup", "reasoning", "reasoning/warmup", base, world)

        # Step 2 + 3: candidates per task (one sub-graph each), then self-consistency. Text-only prompts are
        # answered by the backbone LLM (paper App. A): the base model's language model, or sample.backbone.
        backbone = extract_backbone(**common, model=base)
        place(backbone.set_display_name("extract backbone LLM"), cluster, cache=True)
        samplers = {"caption": perception, "vqa": reasoning, "text": backbone}
        if deploy:
            roles = {"caption": "perception", "vqa": "reasoning", "text": "backbone"}
            candidates = {
                task: served_sample_task(**common, task=task, sample_shards=sample_shards, role=roles[task], model_uri=samplers[task].outputs["Output"],
                                         run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, world=world).set_display_name(f"sample {task}").output
                for task in TASKS
            }
        else:
            artifacts = {"caption": perception.outputs["trained"], "vqa": reasoning.outputs["trained"], "text": backbone.outputs["backbone"]}
            candidates = {
                task: sample_task(**common, task=task, sample_shards=sample_shards, model=artifacts[task], world=world)
                .set_display_name(f"sample {task}").output
                for task in TASKS
            }
        scored = score(
            **common,
            caption_candidates=candidates["caption"],
            vqa_candidates=candidates["vqa"],
            text_candidates=candidates["text"],
            scorer=scorer,  # HOST:PORT of the shared scorer service; empty: config's curate.scorer, else in-process
        )
        place(scored.set_display_name("score"), cluster, cache=True, transient=True)
        curated = place(curate(**common, world=world, scored=scored.outputs["scored"]).set_display_name("curate"), cluster, cache=True).outputs["curated"]

        # Step 4: the next-generation model, and the compute-matched control.
        cycle = _retrain(common, "cycle", "curated", align, world, curated)
        control = _retrain(common, "control", "labeled", align, world)
        models = dict(**common, world=world, base=base, cycle=cycle.outputs["trained"], control=control.outputs["trained"])
        report_args = dict(**common, world=world, curated=curated, perception=perception.outputs["trained"],
                           reasoning=reasoning.outputs["trained"], base=base, cycle=cycle.outputs["trained"],
                           publish_uri=publish_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)

        # The report publishes and seals the cycle (lineage.json): never cached.
        with dsl.If(ablations == True, name="with-ablation"):  # noqa: E712 (KFP conditions compare explicitly)
            uncurated = _retrain(common, "uncurated", "uncurated", align, world, curated)
            evaluation = _evaluate(evaluate(**models, uncurated=uncurated.outputs["trained"]))
            place(report(**report_args, evaluation=evaluation.outputs["evaluation"]).set_display_name("report"), cluster, cache=False)
        with dsl.Else(name="without-ablation"):
            evaluation = _evaluate(evaluate(**models))
            place(report(**report_args, evaluation=evaluation.outputs["evaluation"]).set_display_name("report"), cluster, cache=False)

    return sicog_cycle
