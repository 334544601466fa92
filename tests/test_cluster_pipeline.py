"""The pipeline compiled for a cluster, and recurring cycles: placement in the KFP IR, what
`sicog pipeline submit|schedule` sends to the Kubeflow Pipelines API (a local stand-in that records
requests), and how a run of a series finds its starting point (sicog.lineage)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kfpapi import KfpApi
from sicog import lineage, store
from sicog.config import ConfigError, load_config, parameter_dict
from sicog.pipelines.run import compile_pipeline

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/paper-qwen2-7b.yaml"


def _compiled(tmp_path, overrides=()):
    cfg = load_config(PAPER, list(overrides))
    ir, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "cycle.yaml", cfg).read_text())
    tasks = {t: spec for comp in [ir["root"], *ir["components"].values()] for t, spec in comp.get("dag", {}).get("tasks", {}).items()}
    return cfg, ir, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], tasks


def _resources(ir, executor):
    return ir["deploymentSpec"]["executors"][executor]["container"].get("resources", {})


def test_compiled_pipeline_carries_the_cluster_config(tmp_path):
    cfg, ir, k8s, tasks = _compiled(tmp_path, ["sample.engine=local"])  # in-process sampling on GPUs (the paper config serves it)
    # Every task: the client label the chart's NetworkPolicies admit, and the store's credentials from the Secret.
    for name, executor in k8s.items():
        assert executor["podMetadata"]["labels"] == {"sicog.io/client": "true"}, name
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == "sicog-s3"
        assert {k["envVar"] for k in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for name, spec in ir["deploymentSpec"]["executors"].items():
        assert {"name": "SICOG_S3_ENDPOINT", "value": "http://minio.minio.svc:9000"} in spec["container"]["env"], name
    # GPU tasks: in-process sampling and evaluation, on the A100 pool, with a RAM-backed /dev/shm.
    gpu_executors = [e for e in ir["deploymentSpec"]["executors"] if e.startswith(("exec-sample-shard", "exec-evaluate"))]
    assert len(gpu_executors) == 6  # 3 sampling groups + evaluate without ablations / with uncurated / with uncurated and oracle
    for executor in gpu_executors:
        assert _resources(ir, executor)["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert _resources(ir, executor)["accelerator"]["resourceCount"] == "1"
        # CUDA torch; evaluation with the paper's benchmarks runs in the lmms-eval image
        image = cfg.cluster.eval_image if executor.startswith("exec-evaluate") and cfg.eval.benchmarks else cfg.cluster.trainer_image
        assert ir["deploymentSpec"]["executors"][executor]["container"]["image"] == image
        assert k8s[executor]["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert k8s[executor]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert k8s[executor]["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "256Gi"}]
    # trainer=trainjob: the train tasks only launch and watch their jobs (the GPUs are the jobs').
    train_executors = [e for e in ir["deploymentSpec"]["executors"] if e.startswith("exec-train")]
    assert len(train_executors) == 12 and not any("accelerator" in _resources(ir, e) for e in train_executors)
    assert all(ir["deploymentSpec"]["executors"][e]["container"]["image"].startswith("ghcr.io/sicog-project/sicog:") for e in train_executors)
    assert not any("nodeSelector" in k8s[e] for e in train_executors)
    # Retries on transient steps, caching on pure steps only.
    for name, spec in tasks.items():
        retried = spec.get("retryPolicy", {}).get("maxRetryCount", 0)
        cached = spec.get("cachingOptions", {}).get("enableCache", False)
        if name.startswith(("train", "sample-shard", "collect-candidates", "score")) and name != "sample-shards":  # not the fan-out's sub-DAG
            assert retried == cfg.cluster.retries and spec["retryPolicy"]["backoffDuration"] == "60s", name
        if name.startswith(("start-cycle", "sample-shard", "collect-candidates", "report")):
            assert not cached, name  # they read the store's current state or publish the run
        if name.startswith(("make-world", "init-model", "train", "score", "curate", "evaluate")):
            assert cached, name


def test_evaluate_tasks_carry_the_paper_benchmarks_and_their_dataset_cache(tmp_path):
    """The paper config compiled: evaluate tasks run the lmms-eval image with the paper's benchmarks through
    vLLM in bf16, reading the dataset cache from the store; with cluster.datasets_pvc the PVC is mounted there."""
    cfg, ir, k8s, tasks = _compiled(tmp_path)
    config = ir["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert config["eval"]["benchmarks"] == ["mmstar", "ai2d", "scienceqa_img", "pope", "seedbench", "chartqa", "docvqa_val", "ocrbench"]
    assert (config["eval"]["backend"], config["train"]["bf16"]) == ("vllm", True)
    assert config["eval"]["datasets_cache"].startswith("s3://")
    evaluators = [e for e in ir["deploymentSpec"]["executors"] if e.startswith("exec-evaluate")]
    assert evaluators and all(ir["deploymentSpec"]["executors"][e]["container"]["image"] == cfg.cluster.eval_image for e in evaluators)
    assert not any("pvcMount" in k8s[e] for e in evaluators)
    cfg, ir, k8s, tasks = _compiled(tmp_path, ["cluster.datasets_pvc=benchmark-datasets", "eval.datasets_cache=/datasets"])
    for executor in evaluators:
        assert k8s[executor]["pvcMount"] == [
            {"constant": "benchmark-datasets", "mountPath": "/datasets", "pvcNameParameter": {"runtimeValue": {"constant": "benchmark-datasets"}}}
        ]
    assert not any("pvcMount" in spec for name, spec in k8s.items() if name not in evaluators)
    with pytest.raises(ConfigError, match="absolute path"):
        load_config(PAPER, ["cluster.datasets_pvc=benchmark-datasets"])


def test_torchrun_trainer_puts_the_gpus_on_the_train_tasks(tmp_path):
    # Remote sampling: TGI holds the sampling GPUs; train tasks run torchrun on train.nproc GPUs in their own pod.
    _, ir, k8s, _ = _compiled(tmp_path, ["cluster.trainer=torchrun", "sample.engine=tgi", "sample.endpoint=http://sicog-sampler:8080/v1"])
    for executor in (e for e in ir["deploymentSpec"]["executors"] if e.startswith("exec-train")):
        assert _resources(ir, executor)["accelerator"]["resourceCount"] == "8"
        assert k8s[executor]["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert not any("accelerator" in _resources(ir, e) for e in ir["deploymentSpec"]["executors"] if e.startswith("exec-sample-shard"))


def test_served_engine_deploys_a_server_per_sampling_model_inside_an_exit_handler(tmp_path):
    """engine vllm, no endpoint: each task's sampling group launches the run's server of its model
    (perception, reasoning, backbone) from the trained model's store URI, samples on CPU pods with no
    model download, and deletes the server in an exit handler; the shards are collected after it."""
    cfg, ir, k8s, tasks = _compiled(tmp_path, ["sample.engine=vllm"])
    groups = [c for name, c in ir["components"].items() if name.startswith("comp-served-sample-task")]
    assert len(groups) == 3
    served_from = {}  # role -> what produced the model URI its server loads
    for name, spec in tasks.items():
        if name.startswith("served-sample-task"):
            args = spec["inputs"]["parameters"]
            producer = args["model_uri"]["taskOutputParameter"]["producerTask"]
            made = tasks[producer]["inputs"]["parameters"].get("name", {}).get("runtimeValue", {}).get("constant", producer)
            served_from[args["role"]["runtimeValue"]["constant"]] = made
            assert args["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert served_from == {"perception": "perception/warmup", "reasoning": "reasoning/warmup", "backbone": "extract-backbone"}
    for group in groups:
        dag = group["dag"]["tasks"]
        (handler,) = (t for t in dag if t.startswith("exit-handler"))
        (teardown,) = (t for t in dag if t.startswith("delete-server"))
        (collect,) = (t for t in dag if t.startswith("collect-candidates"))
        assert dag[teardown]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # runs when sampling failed too
        assert dag[teardown]["dependentTasks"] == [handler] and dag[collect]["dependentTasks"] == [handler]
        inner = ir["components"][dag[handler]["componentRef"]["name"]]["dag"]["tasks"]
        assert any(t.startswith("launch-server") for t in inner) and any(t.startswith("sample-shards") for t in inner)
    shard_execs = [e for e in ir["deploymentSpec"]["executors"] if e.startswith("exec-sample-shard")]
    assert len(shard_execs) == 3 and not any("accelerator" in _resources(ir, e) for e in shard_execs)  # the servers hold the GPUs
    shard_tasks = [
        t
        for c in ir["components"].values()
        for n, t in c.get("dag", {}).get("tasks", {}).items()
        if n.startswith("sample-shard") and not n.startswith("sample-shards")
    ]
    assert len(shard_tasks) == 3 and all(set(t["inputs"]["artifacts"]) == {"world"} for t in shard_tasks)  # no model download
    assert all("server" in t["inputs"]["parameters"] for t in shard_tasks)
    for executor in (e for e in ir["deploymentSpec"]["executors"] if e.startswith(("exec-launch-server", "exec-delete-server"))):
        assert "accelerator" not in _resources(ir, executor)
        assert k8s[executor]["podMetadata"]["labels"] == {"sicog.io/client": "true"}
    # The endpoint mode (a server someone else runs) keeps the plain sampling groups.
    _, ir, _, _ = _compiled(tmp_path, ["sample.engine=vllm", "sample.endpoint=http://vllm:8000/v1"])
    assert not any(n.startswith("comp-served-sample-task") for n in ir["components"])


@pytest.fixture()
def kfp_api(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the kfp client keeps a context file under HOME
    api = KfpApi()
    yield api
    api.close()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sicog.cli", *args], capture_output=True, text=True, timeout=300, env=env)


def test_a_cluster_run_without_a_catalog_or_a_starting_model_stops_before_any_task(kfp_api, tmp_path):
    """The demo world and the tiny model are for `sicog cycle`: a cluster run names its data and its model."""
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    for missing in ("data.catalog", "model.start"):
        proc = _cli("pipeline", "submit", "--config", str(PAPER), "--set", f"{missing}=", "--host", kfp_api.url, "--series", "s3://sicog/series", env=env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"{missing} is not set" in " ".join(proc.stderr.split())
    assert kfp_api.posted("/apis/v2beta1/runs") == []


def test_submit_starts_one_run_of_the_compiled_pipeline(kfp_api, tmp_path):
    proc = _cli(
        "pipeline",
        "submit",
        "--config",
        str(PAPER),
        "--host",
        kfp_api.url,
        "--series",
        "s3://sicog/series",
        "--run-name",
        "cycle-now",
        env={**os.environ, "HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("run run-1")
    (run,) = kfp_api.posted("/apis/v2beta1/runs")
    assert run["display_name"] == "cycle-now" and run["service_account"] == "sicog-pipeline"
    params = run["runtime_config"]["parameters"]
    assert params["series_uri"] == "s3://sicog/series" and params["run_uri"] == ""
    # One address per output: every artifact of the run lives under the series' store folder.
    assert run["runtime_config"]["pipeline_root"] == "s3://sicog/series"
    assert params["config"] == parameter_dict(load_config(PAPER))
    # The submitted spec is the compiled pipeline with its Kubernetes placement.
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "sicog-cycle"
    assert "exec-train" in run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_schedule_creates_a_weekly_recurring_run(kfp_api, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    proc = _cli(
        "pipeline",
        "schedule",
        "--config",
        str(PAPER),
        "--host",
        kfp_api.url,
        "--series",
        "s3://sicog/series",
        "--cron",
        "0 0 3 * * 1",
        "--name",
        "weekly",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (recurring,) = kfp_api.posted("/apis/v2beta1/recurringruns")
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert recurring["max_concurrency"] == 1 and recurring["no_catchup"] is True  # cycles run one after another
    assert recurring["runtime_config"]["parameters"]["series_uri"] == "s3://sicog/series"
    assert recurring["experiment_id"] == "exp-1" and kfp_api.posted("/apis/v2beta1/experiments")[0]["display_name"] == "sicog"

    # User errors: one line, exit 2, nothing sent.
    before = len(kfp_api.requests)
    for args, message in (
        (["--cron", "0 3 * * 1", "--series", "s3://sicog/series"], "did you mean '0 0 3 * * 1'?"),
        (["--cron", "0 0 3 * * 1", "--series", "/local/series"], "--series must be in object storage"),
    ):
        proc = _cli("pipeline", "schedule", "--config", str(PAPER), "--host", kfp_api.url, *args, env=env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert message in " ".join(proc.stderr.split()), proc.stderr
    assert len(kfp_api.requests) == before


def _seal(series, name, cycle, finished_at, status="succeeded"):
    record = {"cycle": cycle, "status": status, "finished_at": finished_at, "models": {"cycle": f"{series}/cycles/{name}/steps/train/cycle/instruct"}}
    store.write_text(store.join(series, "cycles", name, "lineage.json"), json.dumps(record))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_series_run_starts_from_the_last_successful_cycle(where, tmp_path, request):
    series = str(tmp_path / "series") if where == "local" else f"s3://{request.getfixturevalue('bucket')}/series"
    config = parameter_dict(load_config(ROOT / "tests/micro.yaml"))
    # An empty series: the first cycle, a fresh model, a new folder under the series.
    first, work = lineage.start_cycle(config, series, "", "0123456789abcdef")
    assert first["cycle"] == 1 and first["model"]["start"] == "" and work.startswith(f"{series}/cycles/") and work.endswith("-01234567")
    assert not first["model"]["foundation"]  # a fresh model goes through stages 1 and 2
    _seal(series, "20261101T030000Z-aaaa", 1, 100.0)
    _seal(series, "20261108T030000Z-bbbb", 2, 200.0)
    _seal(series, "20261115T030000Z-cccc", 3, 300.0, status="running")  # not sealed as succeeded: never a start
    store.write_text(store.join(series, "cycles", "20261122T030000Z-dddd", "steps", "world", "x.json"), "{}")  # unfinished
    nxt, work = lineage.start_cycle(config, series, "", "feedbeef")
    assert nxt["cycle"] == 3 and nxt["model"]["start"] == f"{series}/cycles/20261108T030000Z-bbbb/steps/train/cycle/instruct"
    assert nxt["model"]["foundation"] and nxt["train"]["earlier_curated"] == []  # App. G: the previous model is the foundation
    carried, _ = lineage.start_cycle({**config, "train": {**config["train"], "carry_curated": True}}, series, "", "feedbeef")
    assert carried["train"]["earlier_curated"] == []  # these sealed cycles recorded no curated input
    # An explicit run folder is kept; outside a series nothing changes.
    assert lineage.start_cycle(config, series, "s3://b/run", "x")[1] == "s3://b/run"
    assert lineage.start_cycle(config, "", "", "x") == (config, "")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_starting_model_is_model_start_read_where_it_is(where, tmp_path, request):
    from sicog.steps import StepIO
    from sicog.steps.model import init_model

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "model.safetensors").write_bytes(b"weights")
    start = str(previous)
    if where == "s3":
        start = f"s3://{request.getfixturevalue('bucket')}/cycles/c1/pipeline/train-cycle-instruct/trained"
        store.upload_dir(previous, start)
    config = load_config(ROOT / "tests/micro.yaml", [f"model.start={start}"])
    (tmp_path / "world").mkdir()  # a fresh model's tokenizer would train on it; a started one ignores it
    # A 7B starting model is not copied: the step hands its URI on and writes only its own figures.
    assert init_model(config, StepIO("model-init", str(tmp_path / "out"), {"world": str(tmp_path / "world")})) == start
    out = tmp_path / "out"
    assert not (out / "model.safetensors").exists() and json.loads((out / "step.json").read_text())["start"] == start
    assert "model-init" in json.loads((out / "timings.json").read_text())
