"""The lmms-eval backend: the world's held-out split as a local lmms-eval task, run through
lmms-eval's own simple_evaluate (llava_hf, CPU) in the eval environment, scores the tiny model
exactly as sicog's held-out evaluation does.

The end-to-end tests need the eval environment (.venv-eval from requirements-eval.lock: `make
setup-eval`, which `make test` runs); without it they skip and say how to create it, except under CI,
where they fail. The mapping and argument checks run everywhere.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from sicog.cli import app
from sicog.config import EvalConfig, WorldConfig
from sicog.data import read_role, run_catalog
from sicog.errors import UserError
from sicog.evaluate import lmms
from sicog.evaluate.heldout import evaluate_heldout
from sicog.evaluate.metrics import normalize_answer, vqa_correct
from sicog.prompts import da_question
from sicog.records import read_jsonl
from sicog.world import build_world, world_texts
from tiny import tiny_sampler_model

SMALL = dict(n_base=40, n_annotated=24, n_pool_images=12, n_pool_vqa=20, n_pool_text=12, n_heldout=16, max_objects=4)
MAX_NEW_TOKENS = 16
CREATE_ENV = (
    f"no lmms-eval environment: `make setup-eval` creates it from requirements-eval.lock (or point ${lmms.EVAL_PYTHON_ENV} at an interpreter that has it)"
)


def _eval_python() -> Path:
    """The eval environment; `make test` (and so CI) always creates it, so there its absence fails."""
    python = lmms.eval_python()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail(CREATE_ENV)
        pytest.skip(CREATE_ENV)
    return python


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    build_world(root / "world", WorldConfig(seed=7, **SMALL))
    rows = read_role(run_catalog(root / "world"), "heldout")[0]
    # Scaled random weights: greedy outputs depend on image and prompt (plain init answers "\n" to all).
    model = tiny_sampler_model(root / "model", list(world_texts(root / "world")))
    return root, rows, model


def _ours(model, rows, image_root, path):
    cfg = EvalConfig(max_new_tokens=MAX_NEW_TOKENS, batch_size=1)
    result = evaluate_heldout(model, rows, image_root, path, cfg)
    return result, {row["id"]: row for row in read_jsonl(path)}


@pytest.mark.slow
@pytest.mark.timeout(600)  # lmms-eval end to end in the eval environment
def test_heldout_task_through_lmms_eval_equals_heldout_eval(world_model, tmp_path, monkeypatch):
    python = _eval_python()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    root, rows, model = world_model
    _, first = _ours(model, rows, root / "world", tmp_path / "first.jsonl")
    # A random model answers nothing right, and 0 == 0 would prove little: every other VQA row whose
    # greedy answer normalises to something gets that answer as its reference, so the accuracy is
    # strictly between 0 and 1 and both sides must agree on which rows are right.
    rows = [dict(r) for r in rows]
    vqa = [r for r in rows if r["task"] == "vqa"]
    for row in vqa[::2]:
        if normalize_answer(first[row["id"]]["text"]):
            row["answer"] = first[row["id"]]["text"]
    ours, predictions = _ours(model, rows, root / "world", tmp_path / "ours.jsonl")
    assert 0 < ours["vqa_accuracy"] < 1 and ours["errors"] == 0

    scores = lmms.run_benchmarks(model, [], tmp_path / "lmms", heldout_rows=rows, image_root=root / "world", max_new_tokens=MAX_NEW_TOKENS, python=python)

    # The same schema: flat 0-1 scores with their counts, mergeable into eval.json's model entry.
    assert scores[lmms.HELDOUT_VQA] == ours["vqa_accuracy"]
    assert scores[f"{lmms.HELDOUT_VQA}_n"] == ours["vqa_n"] == len(vqa)
    assert scores[lmms.HELDOUT_CAPTION] == ours["caption_attribute_recall"]
    assert scores[f"{lmms.HELDOUT_CAPTION}_n"] == ours["caption_n"]
    assert set(scores) == {lmms.HELDOUT_VQA, f"{lmms.HELDOUT_VQA}_n", lmms.HELDOUT_CAPTION, f"{lmms.HELDOUT_CAPTION}_n"}
    merged = {**ours, **scores}
    assert all(isinstance(merged[k], float) and 0 <= merged[k] <= 1 for k in ("vqa_accuracy", lmms.HELDOUT_VQA, lmms.HELDOUT_CAPTION))
    # Not only the means: lmms-eval's llava_hf generated the same tokens for every row (it keeps the
    # decoded text unstripped, sicog strips it; the metrics normalise whitespace either way).
    for task in (lmms.HELDOUT_VQA, lmms.HELDOUT_CAPTION):
        theirs = list(read_jsonl(tmp_path / "lmms" / f"predictions_{task}.jsonl"))
        assert len(theirs) == scores[f"{task}_n"]
        for row in theirs:
            assert row["text"].strip() == predictions[row["id"]]["text"], row["id"]
            if task == lmms.HELDOUT_VQA:
                assert bool(row["exact_match"]) == predictions[row["id"]]["correct"], row["id"]
    raw = json.loads((tmp_path / "lmms" / "results_local.json").read_text())
    assert raw["results"][lmms.HELDOUT_VQA]["exact_match,none"] == pytest.approx(ours["vqa_accuracy"], abs=5e-5)


@pytest.mark.slow
@pytest.mark.timeout(600)  # lmms-eval end to end in the eval environment
def test_limit_is_honoured(world_model, tmp_path, monkeypatch):
    python = _eval_python()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    root, rows, model = world_model
    scores = lmms.run_benchmarks(model, [], tmp_path / "lmms", heldout_rows=rows, image_root=root / "world", limit=3, max_new_tokens=4, python=python)
    assert scores[f"{lmms.HELDOUT_VQA}_n"] == 3 and scores[f"{lmms.HELDOUT_CAPTION}_n"] == 3


class _FakeOpenAI(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that gives one answer to everything and keeps what it was asked."""

    seen: list[dict] = []
    keys: set[str] = set()
    answer = ""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        type(self).keys.add(self.headers.get("Authorization"))
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": type(self).answer}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow
@pytest.mark.timeout(600)  # lmms-eval end to end in the eval environment
def test_served_model_through_the_openai_backend(world_model, tmp_path, monkeypatch):
    """backend "openai": lmms-eval's OpenAI-compatible client against a served model (a stand-in
    that always gives the commonest held-out answer): the request carries the held-out prompt and
    image, and the score is the share of rows with that answer."""
    python = _eval_python()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    root, rows, _ = world_model
    vqa = [r for r in rows if r["task"] == "vqa"][:8]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _FakeOpenAI.seen, _FakeOpenAI.keys = [], set()
    answers = [normalize_answer(r["answer"]) for r in vqa]
    _FakeOpenAI.answer = max(answers, key=answers.count)
    try:
        scores = lmms.run_benchmarks(
            "served-sicog",
            [],
            tmp_path / "lmms",
            heldout_rows=vqa,
            image_root=root / "world",
            backend="openai",
            batch_size=4,
            python=python,
            model_args={"base_url": f"http://127.0.0.1:{server.server_port}/v1", "api_key": "sk-served", "num_concurrent": 2},
        )
    finally:
        server.shutdown()
    expected = round(sum(vqa_correct(_FakeOpenAI.answer, r["answer"]) for r in vqa) / len(vqa), 4)
    assert 0 < expected < 1
    assert "api_key" not in (tmp_path / "lmms" / "spec_local.json").read_text()
    assert scores == {lmms.HELDOUT_VQA: expected, f"{lmms.HELDOUT_VQA}_n": len(vqa)}
    assert _FakeOpenAI.keys == {"Bearer sk-served"}
    assert len(_FakeOpenAI.seen) == len(vqa) and {b["model"] for b in _FakeOpenAI.seen} == {"served-sicog"}
    content = _FakeOpenAI.seen[0]["messages"][-1]["content"]
    texts = [c["text"] for c in content if c["type"] == "text"]
    images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
    assert len(images) == 1 and any(t in {da_question(r["question"]) for r in vqa} for t in texts)
    pixels = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    assert pixels.mode == "RGB" and min(pixels.size) > 0


class _Loader(yaml.SafeLoader):
    """Task YAMLs carry `!function module.name` tags; only their names matter here."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix}")


def _task_configs(tasks_dir: Path) -> dict[str, dict]:
    """Every lmms-eval task YAML by task name, its `include` templates merged in (as TaskManager does)."""

    def load(path: Path) -> dict:
        config = yaml.load(path.read_text(), Loader=_Loader) or {}
        if isinstance(config, dict) and "include" in config:
            config = {**load(path.parent / config["include"]), **{k: v for k, v in config.items() if k != "include"}}
        return config if isinstance(config, dict) else {}

    configs = {}
    for path in tasks_dir.rglob("*.yaml"):
        try:
            config = load(path)
        except (yaml.YAMLError, OSError):
            continue
        if isinstance(config.get("task"), str):
            configs[config["task"]] = config
    return configs


def test_benchmark_metrics_are_the_installed_task_metrics():
    """Each benchmark's primary metric is one its lmms-eval task YAML declares (read from the eval
    environment's lmms-eval, so a version bump that renames a metric fails here)."""
    python = _eval_python()
    out = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('lmms_eval').submodule_search_locations[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    configs = _task_configs(Path(out.stdout.strip()) / "tasks")
    for name, (metric, _) in lmms.BENCHMARKS.items():
        if name in lmms.HELDOUT_EQUIVALENT:
            continue
        assert name in configs, name
        declared = [m["metric"] for m in configs[name].get("metric_list", [])]
        assert metric in declared, (name, declared)


def test_parse_results_maps_primary_metrics_to_0_1():
    raw = {
        "results": {
            "ai2d": {"alias": "ai2d", "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A"},
            "mmstar": {"average,none": 0.41, "math,none": 0.3},
            "mmvet": {"gpt_eval_score,none": 37.5},
            "pope": {"pope_accuracy,none": 0.8, "pope_f1_score,none": 0.75},
            "docvqa_val": {"anls,none": float("nan")},
        },
        "n-samples": {
            "ai2d": {"original": 3088, "effective": 20},
            "mmstar": {"original": 1500, "effective": 1500},
            "mmvet": {"original": 218, "effective": 218},
            "pope": {"original": 9000, "effective": 10},
        },
    }
    scores = lmms.parse_results(raw, ["ai2d", "mmstar", "mmvet", "pope", "docvqa_val"])
    assert scores == {
        "ai2d": 0.5,
        "ai2d_n": 20,
        "mmstar": 0.41,
        "mmstar_n": 1500,
        "mmvet": 0.375,
        "mmvet_n": 218,
        "pope": 0.75,
        "pope_n": 10,
        "docvqa_val": None,
        "docvqa_val_n": 0,
    }


def test_arguments_are_checked_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(lmms.EVAL_PYTHON_ENV, str(tmp_path / "no-python"))
    with pytest.raises(UserError, match="unknown benchmarks"):
        lmms.run_benchmarks(tmp_path, ["mmstarr"], tmp_path / "out")
    with pytest.raises(UserError, match="judge"):
        lmms.run_benchmarks(tmp_path, ["mmvet"], tmp_path / "out")
    with pytest.raises(ValueError, match="batch_size"):
        lmms.run_benchmarks(tmp_path, ["ai2d"], tmp_path / "out", batch_size=8)
    with pytest.raises(lmms.LmmsEvalError, match="requirements-eval.lock"):
        lmms.run_benchmarks(tmp_path, ["ai2d"], tmp_path / "out")


def test_judge_endpoint_follows_each_task_convention(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = lmms.Judge("http://judge:8000/v1/", "qwen2.5-72b", api_key_env="JUDGE_KEY")
    assert judge.env("base_url") == {
        "API_TYPE": "openai",
        "MODEL_VERSION": "qwen2.5-72b",
        "OPENAI_API_URL": "http://judge:8000/v1",
        "OPENAI_API_KEY": "sk-test",
    }
    assert judge.env("full_url")["OPENAI_API_URL"] == "http://judge:8000/v1/chat/completions"


def test_main_environment_never_imports_lmms_eval():
    assert importlib.util.find_spec("lmms_eval") is None


@pytest.mark.slow
@pytest.mark.timeout(600)  # lmms-eval end to end in the eval environment
def test_evaluate_step_merges_benchmarks_into_the_heldout_schema(world_model, tmp_path):
    """eval.benchmarks in a cycle's evaluate step: lmms-eval's scores land in the same per-model dict
    as the held-out metrics (eval.json, metrics.json's `heldout`, the promotion gate, KFP Metrics),
    and the step's timings say what each part cost."""
    from sicog.config import SicogConfig
    from sicog.report.metrics import heldout_scores
    from sicog.steps import StepIO
    from sicog.steps.evaluate import evaluate

    _eval_python()
    root, rows, model = world_model
    cfg = SicogConfig(eval=EvalConfig(max_new_tokens=MAX_NEW_TOKENS, batch_size=1, benchmarks=["sicog_heldout_vqa"]))
    results = evaluate(cfg, StepIO("evaluate", str(tmp_path / "eval"), {"world": str(root / "world"), "models": {"base": str(model)}}))
    base = results["base"]
    assert base["sicog_heldout_vqa"] == base["vqa_accuracy"] and base["sicog_heldout_vqa_n"] == base["vqa_n"] > 0
    assert heldout_scores(base) == {
        "vqa_accuracy": base["vqa_accuracy"],
        "caption_attribute_recall": base["caption_attribute_recall"],
        "sicog_heldout_vqa": base["sicog_heldout_vqa"],
    }
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["base"]["sicog_heldout_vqa"] == base["sicog_heldout_vqa"]
    assert (tmp_path / "eval" / "base" / "lmms" / "scores.json").is_file()
    step = json.loads((tmp_path / "eval" / "step.json").read_text())
    assert step["base"]["benchmark_seconds"] > 0 and step["base"]["heldout_seconds"] > 0
    assert step["base"]["sicog_heldout_vqa"] == base["sicog_heldout_vqa"]


# --- the benchmarks' data: a dataset cache filled once, evaluate offline on it; the vLLM backend ------


def _lmms_eval_dir(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('lmms_eval').submodule_search_locations[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def test_benchmark_datasets_are_the_installed_task_datasets():
    """What prefetch fills and evaluate checks is each lmms-eval task YAML's own dataset_path."""
    configs = _task_configs(_lmms_eval_dir(_eval_python()) / "tasks")
    assert set(lmms.DATASETS) == set(lmms.BENCHMARKS) - set(lmms.HELDOUT_EQUIVALENT)
    for name, repo in lmms.DATASETS.items():
        assert configs[name]["dataset_path"] == repo, name


# MMStar's real columns (Lin-Chen/MMStar, split val), two rows of its kind, written by `datasets` itself
# into its own cache layout, as a `load_dataset("Lin-Chen/MMStar")` with the network on leaves it
# (the folder and file names are datasets' CachedDatasetModuleFactory's): what prefetch publishes.
_MMSTAR_CACHE = r"""
import io, os, sys
from pathlib import Path
import datasets
from datasets.naming import camelcase_to_snakecase
from PIL import Image
from typer.testing import CliRunner

home, work = Path(sys.argv[1]), Path(sys.argv[2])
def png(color):
    buf = io.BytesIO(); Image.new("RGB", (64, 64), color).save(buf, format="PNG"); return {"bytes": buf.getvalue(), "path": None}
rows = [
    {"index": 0, "question": "What is the color of the shape in the image?\nOptions: A: red, B: blue, C: green, D: yellow",
     "image": png((220, 30, 30)), "answer": "A", "category": "coarse perception", "l2_category": "image scene and topic",
     "meta_info": {"source": "MMBench", "split": "val", "image_path": "images/0.jpg"}},
    {"index": 1, "question": "Which option describes the image?\nOptions: A: a cat, B: a blue square, C: a tree, D: a car",
     "image": png((30, 30, 220)), "answer": "B", "category": "fine-grained perception", "l2_category": "attribute recognition",
     "meta_info": {"source": "SEEDBench", "split": "val", "image_path": "images/1.jpg"}},
]
features = datasets.Features({
    "index": datasets.Value("int64"), "question": datasets.Value("string"), "image": datasets.Image(),
    "answer": datasets.Value("string"), "category": datasets.Value("string"), "l2_category": datasets.Value("string"),
    "meta_info": {"source": datasets.Value("string"), "split": datasets.Value("string"), "image_path": datasets.Value("string")},
})
datasets.Dataset.from_list(rows, features=features).to_parquet(str(work / "mmstar.parquet"))
builder = datasets.load_dataset_builder("parquet", data_files={"val": str(work / "mmstar.parquet")}, cache_dir=str(home / "datasets"))
builder.download_and_prepare()
[config] = [p for p in (home / "datasets" / "parquet").iterdir() if p.is_dir()]
config.rename(config.parent / "default")
name = camelcase_to_snakecase("MMStar")
for arrow in (home / "datasets" / "parquet").rglob("parquet-val*.arrow"):
    arrow.rename(arrow.with_name(arrow.name.replace("parquet-", name + "-")))
(home / "datasets" / "parquet").rename(home / "datasets" / ("Lin-Chen___" + name))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # lmms-eval end to end in the eval environment
def test_public_benchmark_runs_offline_on_the_dataset_cache(world_model, tmp_path):
    """eval.datasets_cache: lmms-eval's own mmstar task (its YAML, utils and metric) loads MMStar from the
    cache with the network off (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE), as an evaluate task on a cluster
    does; a benchmark the cache lacks stops the step with one line before lmms-eval starts."""
    from sicog.config import SicogConfig
    from sicog.steps import StepIO
    from sicog.steps.evaluate import evaluate

    python = _eval_python()
    root, rows, model = world_model
    cache, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    subprocess.run([str(python), "-c", _MMSTAR_CACHE, str(cache), str(work)], check=True, capture_output=True, env={**os.environ, "HF_HOME": str(cache)})
    (cache / lmms.CACHE_INDEX).write_text(json.dumps({"benchmarks": {"mmstar": "Lin-Chen/MMStar"}}))
    cfg = SicogConfig(eval=EvalConfig(max_new_tokens=4, batch_size=1, benchmarks=["mmstar"], benchmark_limit=2, datasets_cache=str(cache)))
    io_ = StepIO("evaluate", str(tmp_path / "eval"), {"world": str(root / "world"), "models": {"base": str(model)}})
    base = evaluate(cfg, io_)["base"]
    assert base["mmstar_n"] == 2 and 0.0 <= base["mmstar"] <= 1.0
    spec = json.loads((tmp_path / "eval" / "base" / "lmms" / "spec_local.json").read_text())
    assert spec["model"] == "llava_hf" and spec["model_args"]["dtype"] == "float32"  # the config's dtype (train.bf16 off)
    cfg.eval.benchmarks = ["mmstar", "ai2d"]
    with pytest.raises(UserError, match=r"lacks ai2d \(lmms-lab-encoder/ai2d\): fill it with `sicog benchmarks prefetch`"):
        evaluate(cfg, StepIO("evaluate", str(tmp_path / "eval2"), io_.inputs))
    assert not (tmp_path / "eval2" / "base" / "lmms" / "spec_local.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prefetch_says_which_benchmark_it_could_not_load(tmp_path, monkeypatch):
    """Prefetch loads through lmms-eval's own task code; with the hub unreachable (HF_HUB_OFFLINE here)
    it fails in one line per benchmark, and the CLI publishes nothing."""
    _eval_python()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["benchmarks", "prefetch", "--set", "eval.benchmarks=[ai2d]", "--out", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    assert "benchmarks prefetch: ai2d (lmms-lab-encoder/ai2d): " in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "cache" / lmms.CACHE_INDEX).exists()


def test_vllm_backend_spec_is_what_lmms_eval_vllm_takes(world_model, tmp_path):
    """eval.backend vllm: lmms-eval's VLLM gets the model folder, the config's dtype, a batch of requests
    and the folder's chat template as a file (its constructor reads a string holding "/" as a path).
    vLLM needs a GPU, so the spec is checked against the installed VLLM constructor and not run here."""
    import ast

    python = _eval_python()
    root, rows, model = world_model
    with pytest.raises(lmms.LmmsEvalError):  # `false` as the interpreter: the spec is written, nothing runs
        lmms.run_benchmarks(model, ["ai2d"], tmp_path, backend="vllm", batch_size=32, dtype="bfloat16", max_new_tokens=8, python="/bin/false")
    spec = json.loads((tmp_path / "spec_local.json").read_text())
    args = spec["model_args"]
    assert spec["model"] == "vllm" and spec["chat_template"] is None
    assert args["model"] == str(Path(model).resolve()) and args["dtype"] == "bfloat16" and args["batch_size"] == 32 and args["max_new_tokens"] == 8
    assert Path(args["chat_template"]).read_text() == lmms._chat_template(Path(model))
    tree = ast.parse((_lmms_eval_dir(python) / "models" / "simple" / "vllm.py").read_text())
    [init] = [
        f for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "VLLM" for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"
    ]
    named = {a.arg for a in init.args.args}
    assert init.args.kwarg is not None  # the rest (dtype) goes on to vllm.LLM(**kwargs)
    assert {"model", "batch_size", "max_new_tokens", "chat_template"} <= named
