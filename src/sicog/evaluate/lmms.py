"""Public benchmarks through lmms-eval, scored into the same per-model dict as the held-out eval.

Why a subprocess in its own environment: lmms-eval needs torchvision, and no torchvision on the
package index imports beside the main lock's torch 2.13.0+cpu; so lmms-eval lives in `.venv-eval`
(requirements-eval.lock: torch 2.14.1, torchvision 0.29.1, the same transformers 5.23.0) or in the
eval image, and the main environment never imports it. This module is also the entry point run
there (`python -m sicog.evaluate.lmms SPEC.json`, with a link to the `sicog` package alone on
PYTHONPATH); at import time it needs only the standard library (and sicog.errors and
sicog.evaluate.benchmarks, which import nothing).

Why the held-out split also becomes an lmms-eval task: the world's held-out metrics and the public
benchmarks then go through one harness (prompt rendering, generation, metric, aggregation), so a
difference between them is the data, not the code. The task asks the same direct-answer prompt as
`sicog.evaluate.heldout`, feeds the same RGB pixels (materialised as PNG by the main side, which can
read s3:// and hf-row: images; the eval side cannot), and scores with the very functions
`sicog.evaluate.metrics` (imported from PYTHONPATH: they need only PIL), so with greedy decoding
its scores equal `evaluate_heldout`'s.

Schema: `run_benchmarks` returns flat keys, `{"<benchmark>": score in 0-1, "<benchmark>_n": docs}`,
to merge into a model's entry of eval.json next to `vqa_accuracy` etc.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The benchmark table lives in an import-free module that sicog.config reads too; re-exported here.
from sicog.errors import UserError
from sicog.evaluate.benchmarks import BENCHMARKS, DATASETS, HELDOUT_CAPTION, HELDOUT_EQUIVALENT, HELDOUT_VQA, JUDGED

EVAL_PYTHON_ENV = "SICOG_EVAL_PYTHON"
_MODEL_KEY_ENV = "SICOG_LMMS_MODEL_API_KEY"


@dataclass(frozen=True)
class Judge:
    """An OpenAI-compatible endpoint for judged benchmarks; the key is read from `api_key_env` of
    this process (a Secret's variable in a pod), never written to a file."""

    base_url: str  # e.g. http://judge:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"

    def env(self, style: str) -> dict[str, str]:
        url = self.base_url.rstrip("/")
        return {
            "API_TYPE": "openai",
            "MODEL_VERSION": self.model,
            "OPENAI_API_URL": url + "/chat/completions" if style == "full_url" else url,
            "OPENAI_API_KEY": os.environ.get(self.api_key_env, ""),
        }


class LmmsEvalError(RuntimeError):
    """lmms-eval failed, or its environment is missing."""


def eval_python() -> Path | None:
    """The eval environment's interpreter: $SICOG_EVAL_PYTHON, else .venv-eval beside the source
    tree (an editable install); None when neither exists."""
    if os.environ.get(EVAL_PYTHON_ENV):
        return Path(os.environ[EVAL_PYTHON_ENV])
    candidate = Path(__file__).resolve().parents[3] / ".venv-eval" / "bin" / "python"
    return candidate if candidate.exists() else None


def _sicog_path(out_dir: Path) -> str:
    """A folder holding only the `sicog` package (a link to it), for the eval side's PYTHONPATH.

    Not the package's parent: installed, that is the main environment's site-packages, whose torch
    and transformers would shadow the eval environment's own."""
    folder = out_dir / "pythonpath"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "sicog"
    target = Path(__file__).resolve().parents[1]
    if not (link.is_symlink() and link.resolve() == target):
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)
    return str(folder)


# --- the local held-out tasks ---------------------------------------------------------------------

_TASK_UTILS = '''"""Written by sicog.evaluate.lmms: the SICOG held-out split as lmms-eval tasks."""
import json
from pathlib import Path

from PIL import Image

from sicog.evaluate.metrics import caption_attribute_recall, vqa_correct

_HERE = Path(__file__).parent


def doc_to_visual(doc):
    if not doc["image"]:
        return []
    with Image.open(_HERE / doc["image"]) as im:
        return [im.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]


def doc_to_target(doc):
    return doc["answer"]


def vqa_results(doc, results):
    return {"exact_match": float(vqa_correct(results[0], doc["answer"]))}


def caption_results(doc, results):
    return {"attribute_recall": caption_attribute_recall(results[0], json.loads(doc["scene"]))}
'''


def _task_yaml(name: str, data: str, process_results: str, metric: str, max_new_tokens: int) -> str:
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
  num_beams: 1
process_results: !function utils.{process_results}
metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_heldout_tasks(rows: list[dict], image_root: str | Path | None, task_dir: str | Path, *, max_new_tokens: int = 64) -> list[str]:
    """Writes the held-out rows as lmms-eval tasks (VQA: exact match; captions with a scene:
    attribute recall) under `task_dir`; returns the task names that have rows.

    Prompts are those of `heldout_requests`; images are read as `evaluate_heldout` reads them and
    stored as RGB PNGs beside the data, so the eval side opens plain files. A row whose image cannot
    be read is left out (the held-out eval counts it as an error instead)."""
    from sicog.data.images import open_image
    from sicog.evaluate.heldout import heldout_requests, heldout_row

    task_dir = Path(task_dir)
    (task_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = [heldout_row(r) for r in rows]
    prompts = {req["id"]: req["prompt"] for req in heldout_requests(rows)}
    docs: dict[str, list[dict]] = {HELDOUT_VQA: [], HELDOUT_CAPTION: []}
    for k, row in enumerate(rows):
        image = ""
        if row.get("image"):
            try:
                pixels = open_image(row["image"], image_root)
            except ValueError:
                continue
            image = f"images/{k}.png"
            pixels.save(task_dir / image)
        doc = {"id": row["id"], "prompt": prompts[row["id"]], "image": image}
        if row["task"] == "vqa":
            docs[HELDOUT_VQA].append({**doc, "answer": str(row["answer"])})
        elif "scene" in row:
            docs[HELDOUT_CAPTION].append({**doc, "answer": "", "scene": json.dumps(row["scene"])})
    (task_dir / "utils.py").write_text(_TASK_UTILS)
    names = []
    for name, metric, fn in ((HELDOUT_VQA, "exact_match", "vqa_results"), (HELDOUT_CAPTION, "attribute_recall", "caption_results")):
        if not docs[name]:
            continue
        data = task_dir / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs[name]))
        (task_dir / f"{name}.yaml").write_text(_task_yaml(name, str(data.resolve()), fn, metric, max_new_tokens))
        names.append(name)
    return names


# --- the benchmarks' dataset cache ----------------------------------------------------------------

# Written by `prefetch` beside the HF_HOME content it filled: which benchmarks' data the cache holds.
CACHE_INDEX = "sicog-benchmarks.json"


def offline_env(cache: Path) -> dict[str, str]:
    """lmms-eval on a filled dataset cache, never the network: `datasets` loads a hub dataset offline
    from HF_HOME/datasets (the arrow tables `load_dataset` prepared when the cache was filled)."""
    return {"HF_HOME": str(Path(cache).resolve()), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def check_cache(benchmarks: list[str], cache: Path, where: str) -> None:
    """One line naming what is missing, instead of a crash inside lmms-eval with the network off."""
    index = Path(cache) / CACHE_INDEX
    held = json.loads(index.read_text()).get("benchmarks", {}) if index.is_file() else {}
    missing = [b for b in benchmarks if b in DATASETS and b not in held]
    if missing:
        names = ", ".join(f"{b} ({DATASETS[b]})" for b in missing)
        raise UserError(f"eval.datasets_cache {where} lacks {names}: fill it with `sicog benchmarks prefetch` where the Hugging Face Hub is reachable")


def prefetch(benchmarks: list[str], hf_home: str | Path, *, python: str | Path | None = None, timeout: float | None = None) -> dict:
    """Fill `hf_home` with the datasets of `benchmarks`, loaded by lmms-eval's own task code (each
    task's dataset_path, dataset_name and dataset_kwargs) in the eval environment, and index them in
    CACHE_INDEX. Returns the index; UserError naming each benchmark that could not be loaded."""
    public = [b for b in benchmarks if b in DATASETS]
    python = Path(python) if python else eval_python()
    if python is None or not python.exists():
        raise LmmsEvalError(f"no lmms-eval environment: create .venv-eval from requirements-eval.lock or set {EVAL_PYTHON_ENV}")
    hf_home = Path(hf_home)
    hf_home.mkdir(parents=True, exist_ok=True)
    spec = {"prefetch": public, "results": str(hf_home / "prefetch-results.json")}
    spec_path = hf_home / "prefetch-spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HOME": str(hf_home.resolve()), "PYTHONPATH": _sicog_path(hf_home / ".sicog"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(python), "-m", "sicog.evaluate.lmms", str(spec_path)], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise LmmsEvalError(f"lmms-eval exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
    failed = json.loads(Path(spec["results"]).read_text())["failed"]
    for name in ("prefetch-spec.json", "prefetch-results.json"):
        (hf_home / name).unlink()
    shutil.rmtree(hf_home / ".sicog", ignore_errors=True)
    if failed:
        raise UserError("benchmarks prefetch: " + "; ".join(f"{b} ({DATASETS[b]}): {reason}" for b, reason in failed.items()))
    index = {"benchmarks": {b: DATASETS[b] for b in public}}
    (hf_home / CACHE_INDEX).write_text(json.dumps(index, indent=1))
    return index


# --- running lmms-eval ----------------------------------------------------------------------------


def run_benchmarks(
    model: str | Path,
    benchmarks: list[str],
    out_dir: str | Path,
    *,
    heldout_rows: list[dict] | None = None,
    image_root: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    max_new_tokens: int = 64,
    judge: Judge | None = None,
    backend: str = "llava_hf",
    model_args: dict | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    chat_template: str | None = None,
    datasets_cache: str | Path | None = None,
    python: str | Path | None = None,
    timeout: float | None = None,
) -> dict:
    """{"<benchmark>": score 0-1, "<benchmark>_n": docs scored, ...} for `benchmarks` (names of
    BENCHMARKS), plus the held-out tasks when `heldout_rows` are given.

    backend "llava_hf": `model` is a saved LLaVA folder, loaded with its processor; the chat template
    (`chat_template`, else the folder's own) is set explicitly on lmms-eval's model, so lmms-eval's
    Vicuna fallback never applies;
    lmms-eval's llava_hf decodes one request at a time (batch_size must be 1). backend "vllm": `model`
    is a saved LLaVA folder that lmms-eval's vLLM backend loads on the GPU in `dtype`, batch_size
    requests at a time, with the folder's chat template. backend "openai": `model` is the served
    model's name and `model_args` carries base_url (and api_key). `datasets_cache`: a filled dataset
    cache (`prefetch`), on which lmms-eval runs offline (`check_cache` first). Raw lmms-eval
    results, per-sample predictions and wall times land in `out_dir` (results_<group>.json,
    predictions_<task>.jsonl, scores.json).
    """
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmarks {unknown}; known: {sorted(BENCHMARKS)}")
    if backend == "llava_hf" and batch_size != 1:
        raise ValueError("lmms-eval's llava_hf decodes one request at a time: batch_size must be 1")
    missing_judge = [b for b in benchmarks if b in JUDGED and judge is None]
    if missing_judge:
        raise UserError(f"{missing_judge} are scored by a judge model: give a judge endpoint")
    python = Path(python) if python else eval_python()
    if python is None or not python.exists():
        raise LmmsEvalError(f"no lmms-eval environment: create .venv-eval from requirements-eval.lock or set {EVAL_PYTHON_ENV}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = list(benchmarks)
    include_path = None
    if heldout_rows:
        include_path = out_dir / "tasks"
        tasks += write_heldout_tasks(heldout_rows, image_root, include_path, max_new_tokens=max_new_tokens)
    args = {"batch_size": batch_size, **(model_args or {})}
    if datasets_cache is not None:
        check_cache(benchmarks, Path(datasets_cache), str(datasets_cache))
    if backend == "llava_hf":
        # device_map: llava_hf's default "" is refused by transformers 5 (from_pretrained wants a device name).
        args = {"pretrained": str(Path(model).resolve()), "device": device, "device_map": device, "dtype": dtype, **args}
        template = chat_template or _chat_template(Path(model))
    elif backend == "vllm":
        # lmms-eval's VLLM takes the template as a file path (a template string holding "/" would be read as one).
        template_file = out_dir / "chat_template.jinja"
        template_file.write_text(chat_template or _chat_template(Path(model)) or "")
        args = {"model": str(Path(model).resolve()), "dtype": dtype, "max_new_tokens": max_new_tokens, "chat_template": str(template_file), **args}
        template = None
    else:
        args = {"model_version": str(model), **args}
        template = None
    # A served model's key travels in the environment, never in the spec file written to out_dir.
    model_key = args.pop("api_key", None)
    # One lmms-eval run per judge URL convention (a process has one OPENAI_API_URL); "local": no judge.
    groups: dict[str, list[str]] = {}
    for task in tasks:
        groups.setdefault(JUDGED.get(task, "local"), []).append(task)
    scores: dict = {}
    seconds: dict[str, float] = {}
    for style, group in groups.items():
        spec = {
            "model": backend,
            "model_args": args,
            "chat_template": template,
            "tasks": group,
            "limit": limit,
            "include_path": str(include_path) if include_path else None,
            "defaults": any(t in BENCHMARKS and t not in HELDOUT_EQUIVALENT for t in group),
            "results": str(out_dir / f"results_{style}.json"),
        }
        env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": _sicog_path(out_dir),
            **(offline_env(Path(datasets_cache)) if datasets_cache is not None else {}),
            **(judge.env(style) if judge and style != "local" else {}),
            **({_MODEL_KEY_ENV: str(model_key)} if model_key is not None else {}),
        }
        spec_path = out_dir / f"spec_{style}.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        start = time.monotonic()
        proc = subprocess.run([str(python), "-m", "sicog.evaluate.lmms", str(spec_path)], env=env, capture_output=True, text=True, timeout=timeout)
        (out_dir / f"log_{style}.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise LmmsEvalError(f"lmms-eval exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
        raw = json.loads(Path(spec["results"]).read_text())
        scores.update(parse_results(raw, group))
        seconds[style] = round(time.monotonic() - start, 1)
        _write_predictions(raw, out_dir)
    (out_dir / "scores.json").write_text(json.dumps({"scores": scores, "seconds": seconds}, indent=1))
    return scores


def _chat_template(model_dir: Path) -> str | None:
    """The folder's own chat template (processor's chat_template.jinja/.json, else the tokenizer's)."""
    for name in ("chat_template.jinja",):
        if (model_dir / name).exists():
            return (model_dir / name).read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.exists():
            template = json.loads(path.read_text()).get("chat_template")
            if isinstance(template, str):
                return template
    return None


def parse_results(raw: dict, tasks: list[str]) -> dict:
    """Flat scores of lmms-eval's `results` for `tasks`: "<task>": primary metric x factor (rounded
    to 4 places like the held-out eval; None when lmms-eval reports none), "<task>_n": docs scored."""
    out: dict = {}
    for task in tasks:
        metric, factor = BENCHMARKS[task]
        entry = raw.get("results", {}).get(task, {})
        value = next((v for k, v in entry.items() if k.split(",")[0] == metric and "_stderr" not in k), None)
        if isinstance(value, (int, float)) and not math.isnan(value):
            out[task] = round(float(value) * factor, 4)
        else:
            out[task] = None
        out[f"{task}_n"] = raw.get("n-samples", {}).get(task, {}).get("effective", 0)
    return out


def _write_predictions(raw: dict, out_dir: Path) -> None:
    """Per-sample rows in the held-out eval's predictions format ({"id", "text", ...metric})."""
    for task, samples in (raw.get("samples") or {}).items():
        rows = []
        for s in samples:
            doc = s.get("doc") or {}
            text = s["filtered_resps"][0] if s.get("filtered_resps") else None
            metric = BENCHMARKS.get(task, (None,))[0]
            rows.append({"id": doc.get("id", s.get("doc_id")), "task": task, "text": text, **({metric: s[metric]} if metric in s else {})})
        (out_dir / f"predictions_{task}.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))


# --- the eval side (runs in the lmms-eval environment) --------------------------------------------


def _prefetch_main(spec: dict) -> None:
    """Load each benchmark's dataset the way lmms-eval's task does (its own download()), into HF_HOME."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager()
    failed = {}
    for name in spec["prefetch"]:
        try:
            get_task_dict([name], manager)
        except Exception as exc:  # noqa: BLE001 - each benchmark's failure is reported, the others still load
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    Path(spec["results"]).write_text(json.dumps({"failed": failed}))


def _main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if "prefetch" in spec:
        _prefetch_main(spec)
        return
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    # The model is built here from a dict rather than lmms-eval's "k=v,k=v" string, which cannot
    # carry a chat template (commas); the evaluation itself is simple_evaluate's.
    args = dict(spec["model_args"])
    if os.environ.get(_MODEL_KEY_ENV) is not None:
        args["api_key"] = os.environ[_MODEL_KEY_ENV]
    lm = get_model(spec["model"])(**args)
    if spec.get("chat_template"):
        # llava_hf's simple path applies `chat_template` to the tokenizer; its chat path renders
        # with the processor's. Both get the model folder's own.
        lm.chat_template = spec["chat_template"]
        lm.tokenizer.chat_template = spec["chat_template"]
        lm._image_processor.chat_template = spec["chat_template"]
    manager = TaskManager(include_path=spec["include_path"], include_defaults=spec["defaults"], model_name=spec["model"])
    results = simple_evaluate(
        model=lm, tasks=spec["tasks"], limit=spec["limit"], task_manager=manager, log_samples=True, bootstrap_iters=0, process_docs_parallel=1
    )
    if results is None:
        raise SystemExit("lmms-eval returned no results")
    Path(spec["results"]).write_text(json.dumps({k: results.get(k) for k in ("results", "n-samples", "samples", "config")}, default=str))


if __name__ == "__main__":
    _main(sys.argv[1])
