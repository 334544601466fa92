"""The SICOG cycle as one KFP pipeline: the same definition runs under `kfp.local` and on Kubeflow.

It reads like the paper's Figure 2, plus the controls that make the demo honest:
  world -> starting model -> stage 1 (align) -> stage 2 (base model)
  step 1: warm-up -> perception model (DD + CoD), reasoning model (DA + CoT)
  step 2: sample candidates (captions, VQA; text-only from the backbone LLM)   step 3: score + curate
  step 4: stage 1.5 on curated data -> stage 2 (cycle model)
  control: stage 1.5 on labeled data, same steps -> stage 2;  ablation (optional): uncurated data,
  and with `oracle` also the pool with its true labels (the ceiling)
  evaluate base / cycle / control (/ uncurated / oracle) on the held-out split -> report -> lineage

One address per output: every output is a KFP artifact under the pipeline root, which is the run's
store folder (s3://... on a cluster, set when the run is submitted; the run's local folder under
kfp.local). Train tasks take their inputs as URIs (upstream tasks return their artifact's URI), so a
cluster training job reads them where they are and writes its model once, where the next task reads
it. `run_uri` is the run's own folder: where sampling keeps its shards (a re-run resumes them) and
where the report and lineage.json land.

`cycle_pipeline(config)` returns the pipeline with the cluster placement of `config.cluster` baked in
(node selectors, GPUs, secrets, retries: see placement.py); `cycle_pipeline()` is the same DAG for
kfp.local. With a served `sample.engine` and no `sample.endpoint`, the compiled pipeline deploys a
server per sampling model for its sampling group only; that choice is made at compile time.
"""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Model

from sicog.components.backbone import extract_backbone
from sicog.components.curate import curate
from sicog.components.evaluate import evaluate
from sicog.components.model import init_model
from sicog.components.report import report
from sicog.components.sample import collect_candidates, sample_shard
from sicog.components.score import score
from sicog.components.serve import delete_server, launch_server
from sicog.components.start import start_cycle
from sicog.components.train import train
from sicog.components.world import make_world
from sicog.config import ClusterConfig, SicogConfig, for_cluster
from sicog.pipelines.placement import place

TASKS = ("caption", "vqa", "text")
ROLES = {"caption": "perception", "vqa": "reasoning", "text": "backbone"}  # the model that samples each task


def sampling_groups(cluster: ClusterConfig | None, sample_gpus: int = 0):
    """(sample_task, served_sample_task): step 2 for one task as a sub-pipeline, from the task's model
    (its shards in parallel, then collected) or from a server deployed for the run and that model
    (sample.engine tgi | vllm | sglang without sample.endpoint), deleted on exit whatever happened."""

    @dsl.pipeline(name="sample-shards", description="Step 2 for one task: its pool's shards in parallel, from the task's model.")
    def model_fanout(config: dict, run_uri: str, task: str, sample_shards: list, model: Model, world: Dataset):
        with dsl.ParallelFor(items=sample_shards, name="shards") as shard:
            sampled = sample_shard(config=config, work_uri=run_uri, task=task, shard=shard, model=model, world=world)
            place(sampled.set_display_name("sample shard"), cluster, cache=False, gpus=sample_gpus, transient=True)

    @dsl.pipeline(name="sample-shards-served", description="Step 2 for one task: its pool's shards in parallel, from a server.")
    def server_fanout(config: dict, run_uri: str, task: str, sample_shards: list, server: dict, world: Dataset):
        with dsl.ParallelFor(items=sample_shards, name="shards") as shard:
            sampled = sample_shard(config=config, work_uri=run_uri, task=task, shard=shard, server=server, world=world)
            place(sampled.set_display_name("sample shard"), cluster, cache=False, transient=True)

    def collect(config, run_uri, task: str, after):
        """The one collector: reads every shard of `task` where the shard tasks keep them, after them."""
        collected = collect_candidates(config=config, work_uri=run_uri, task=task).after(after)
        return place(collected.set_display_name("collect"), cluster, cache=False, transient=True).outputs["candidates"]

    @dsl.pipeline(name="sample-task", description="Step 2 for one task: its pool's shards in parallel, then collected.")
    def sample_task(config: dict, run_uri: str, task: str, sample_shards: list, model: Model, world: Dataset) -> Dataset:
        fanout = model_fanout(config=config, run_uri=run_uri, task=task, sample_shards=sample_shards, model=model, world=world)
        return collect(config, run_uri, task, fanout.set_caching_options(False))

    @dsl.pipeline(name="served-sample-task", description="Step 2 for one task on a server deployed for this run and model, deleted on exit.")
    def served_sample_task(config: dict, run_uri: str, task: str, sample_shards: list, role: str, model_uri: str, run_id: str, world: Dataset) -> Dataset:
        # The exit handler deletes the server whether sampling succeeded or failed (and sicog.cluster.serving
        # sweeps what it missed). The fan-out sits in its own sub-pipeline: KFP's backend does not run a
        # ParallelFor placed directly in an ExitHandler (kubeflow/pipelines#12390).
        teardown = place(delete_server(config=config, run_id=run_id, role=role).set_display_name("delete server"), cluster, cache=False)
        with dsl.ExitHandler(teardown, name="serving") as serving:
            server = place(launch_server(config=config, run_id=run_id, role=role, model_uri=model_uri).set_display_name("launch server"), cluster, cache=False)
            server_fanout(config=config, run_uri=run_uri, task=task, sample_shards=sample_shards, server=server.output, world=world).set_caching_options(False)
        return collect(config, run_uri, task, serving)

    return sample_task, served_sample_task


def served_sampling(cluster: ClusterConfig | None):
    """The served sampling group of one task (see sampling_groups)."""
    return sampling_groups(cluster)[1]


def cycle_pipeline(compiled_for: SicogConfig | None = None, root: str = ""):
    """The cycle pipeline; `compiled_for` (a config with a `cluster` section) places its tasks on a
    cluster, None leaves them unplaced for kfp.local. `root`: the default pipeline root (the store
    folder the runs keep their outputs in); a submitted run may set its own."""
    compiled_for = for_cluster(compiled_for) if compiled_for is not None else None  # cluster.trainer auto -> trainjob
    cluster = compiled_for.cluster if compiled_for is not None else None
    # GPUs per task (used only where cluster.accelerator is set). With trainer=trainjob or pytorchjob a
    # train task only launches and watches its job; with a served engine, the engine holds the GPUs.
    train_gpus = compiled_for.train.nproc if cluster is not None and cluster.trainer == "torchrun" else 0
    sample_gpus = 1 if compiled_for is not None and compiled_for.sample.engine == "local" else 0
    deploy = compiled_for is not None and compiled_for.sample.engine in ("tgi", "vllm", "sglang") and not compiled_for.sample.endpoint
    sample_task, served_sample_task = sampling_groups(cluster, sample_gpus)

    def _train(config, stage: str, data: str, name: str, model, world, curated=None):
        """A train task; `model`, `world`, `curated`: URIs (upstream tasks' return values)."""
        task = train(config=config, stage=stage, data=data, name=name, model=model, world=world, curated=curated if curated is not None else "")
        return place(task.set_display_name(f"train {name}"), cluster, cache=True, gpus=train_gpus, transient=True)

    def _retrain(config, label: str, data: str, align, world, curated=None):
        """Step 4 after stage 1: stage 1.5 on `data`, then stage 2 on the instruction data."""
        pretrain = _train(config, "pretrain", data, f"{label}/pretrain", align, world, curated)
        return _train(config, "instruct", "base", f"{label}/instruct", pretrain.outputs["Output"], world)

    def _evaluate(task):
        """The evaluate task: a GPU task; with eval.benchmarks in the lmms-eval image, with the judge's key
        and the benchmarks' dataset cache (a PVC mounted at eval.datasets_cache, else fetched from the store)."""
        place(task.set_display_name("evaluate"), cluster, cache=True, gpus=1)
        if cluster is not None and compiled_for.eval.benchmarks:
            task.set_container_image(cluster.eval_image)
            if cluster.datasets_pvc:
                kubernetes.mount_pvc(task, pvc_name=cluster.datasets_pvc, mount_path=compiled_for.eval.datasets_cache)
            if cluster.judge_secret:
                key = compiled_for.eval.judge_key_env
                kubernetes.use_secret_as_env(task, secret_name=cluster.judge_secret, secret_key_to_env={key: key})
        return task

    @dsl.pipeline(name="sicog-cycle", description="One SICOG self-improvement cycle (arXiv 2503.12303) with its controls.", pipeline_root=root or None)
    def sicog_cycle(
        config: dict, ablations: bool = False, run_uri: str = "", scorer: str = "", sample_shards: list = [0, 1], series_uri: str = "", oracle: bool = False
    ):
        # run_uri: the run's folder in the store (shards, report, lineage). series_uri: a store folder shared
        # by recurring runs; the run starts from the series' last successful cycle and, without a run_uri,
        # works in a new folder of the series (sicog.lineage).
        start = start_cycle(config=config, series_uri=series_uri, run_uri=run_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        place(start.set_display_name("start cycle"), cluster, cache=False)
        config, run_uri = start.outputs["config"], start.outputs["run_uri"]
        world_task = place(make_world(config=config).set_display_name("world"), cluster, cache=True)
        world, world_uri = world_task.outputs["world"], world_task.outputs["Output"]
        fresh = place(init_model(config=config, world=world).set_display_name("starting model"), cluster, cache=True).outputs["Output"]

        # Base model, as in the paper's Table 1 baseline: stage 1 + stage 2. From a foundation model (a series'
        # previous cycle, paper App. G: model.foundation) both tasks pass it through untrained.
        align = _train(config, "align", "align", "stage1/align", fresh, world_uri).outputs["Output"]
        base = _train(config, "instruct", "base", "base/instruct", align, world_uri)

        # Step 1: systematic cognition from minimal annotations.
        perception = _train(config, "warmup", "perception", "perception/warmup", base.outputs["Output"], world_uri)
        reasoning = _train(config, "warmup", "reasoning", "reasoning/warmup", base.outputs["Output"], world_uri)

        # Step 2 + 3: candidates per task (one sub-graph each), then self-consistency. Text-only prompts are
        # answered by the backbone LLM (paper App. A): the base model's language model, or sample.backbone.
        backbone = place(extract_backbone(config=config, model=base.outputs["trained"]).set_display_name("extract backbone LLM"), cluster, cache=True)
        samplers = {"caption": perception, "vqa": reasoning}
        candidates = {}
        for task in TASKS:
            if deploy:
                model_uri = backbone.outputs["Output"] if task == "text" else samplers[task].outputs["Output"]
                sampled = served_sample_task(
                    config=config,
                    run_uri=run_uri,
                    task=task,
                    sample_shards=sample_shards,
                    role=ROLES[task],
                    model_uri=model_uri,
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    world=world,
                )
            else:
                model = backbone.outputs["backbone"] if task == "text" else samplers[task].outputs["trained"]
                sampled = sample_task(config=config, run_uri=run_uri, task=task, sample_shards=sample_shards, model=model, world=world)
            candidates[task] = sampled.set_display_name(f"sample {task}").output
        scored = score(
            config=config, caption_candidates=candidates["caption"], vqa_candidates=candidates["vqa"], text_candidates=candidates["text"], scorer=scorer
        )  # scorer: HOST:PORT of the scorer service, or empty
        place(scored.set_display_name("score"), cluster, cache=True, transient=True)
        curated = place(curate(config=config, world=world, scored=scored.outputs["scored"]).set_display_name("curate"), cluster, cache=True)

        # Step 4: the next-generation model, and the compute-matched control.
        cycle = _retrain(config, "cycle", "curated", align, world_uri, curated.outputs["Output"])
        control = _retrain(config, "control", "labeled", align, world_uri)
        models = dict(config=config, world=world, base=base.outputs["trained"], cycle=cycle.outputs["trained"], control=control.outputs["trained"])
        report_args = dict(
            config=config,
            world=world,
            curated=curated.outputs["curated"],
            perception=perception.outputs["trained"],
            reasoning=reasoning.outputs["trained"],
            base=base.outputs["trained"],
            cycle=cycle.outputs["trained"],
            run_uri=run_uri,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )

        # The report publishes and seals the cycle (lineage.json): never cached.
        with dsl.If(ablations == True, name="with-ablation"):  # noqa: E712 (KFP conditions compare explicitly)
            uncurated = _retrain(config, "uncurated", "uncurated", align, world_uri, curated.outputs["Output"])
            with dsl.If(oracle == True, name="with-oracle"):  # noqa: E712
                # The ceiling: stage 1.5 on the pool with its true labels (needs the world's truth), same steps.
                ceiling = _retrain(config, "oracle", "oracle", align, world_uri, curated.outputs["Output"])
                evaluation = _evaluate(evaluate(**models, uncurated=uncurated.outputs["trained"], oracle=ceiling.outputs["trained"]))
                place(report(**report_args, evaluation=evaluation.outputs["evaluation"]).set_display_name("report"), cluster, cache=False)
            with dsl.Else(name="without-oracle"):
                evaluation = _evaluate(evaluate(**models, uncurated=uncurated.outputs["trained"]))
                place(report(**report_args, evaluation=evaluation.outputs["evaluation"]).set_display_name("report"), cluster, cache=False)
        with dsl.Else(name="without-ablation"):
            evaluation = _evaluate(evaluate(**models))
            place(report(**report_args, evaluation=evaluation.outputs["evaluation"]).set_display_name("report"), cluster, cache=False)

    return sicog_cycle
