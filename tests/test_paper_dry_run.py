"""The paper's cycle as a platform team starts it: configs/paper-qwen2-7b.yaml itself, with only sizes
overridden, on a folder of data in the formats the public sets come in, as a 2-cycle series.

- the model: `sicog model assemble` of a random-weight CLIP tower with CLIP-ViT-L/14-336's geometry
  (336 px, 14 px patches: 576 image tokens) and a Qwen2-architecture LM with few, narrow layers, in
  bf16 as the paper trains (train.bf16 stays on);
- the data: LLaVA-558k-style JSON (align), LLaVA-665k-style JSON with system turns and reused ids
  (instruct), LLaVA-CoT (reasoning), a Hugging Face parquet pool with the images inside, a held-out set;
- sampling: vLLM (sample.engine stays vllm) at an endpoint: the engine stand-in (tests/engine.py, vLLM's
  flags, `n` choices seeded seed + k) in front of `transformers serve`;
- evaluation: the held-out split, and lmms-eval's own mmstar task offline on a dataset cache in
  `datasets`' format (eval.datasets_cache), with the llava_hf backend (vLLM needs a GPU);
- the series: each cycle takes its own slice of the pool (data.pool_per_cycle), and the first run's
  output folder is deleted before the second cycle, which starts from the first cycle's model in the
  series folder and goes through the promotion gate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

import engine as standin
from sicog import lineage
from sicog.evaluate import lmms
from sicog.generate.serving import TransformersServer, sampling_copy
from sicog.records import read_jsonl
from test_lmms_eval import _MMSTAR_CACHE, _eval_python
from tiny import foundation_parts

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/paper-qwen2-7b.yaml"
MICRO = ROOT / "tests/micro.yaml"
POOL_PER_CYCLE = 4
STAGE_SIZE = {"max_steps": 2, "batch_size": 4, "per_device_batch_size": 2}  # learning rates, schedules and what trains stay the paper's
SYSTEM = "You are a helpful assistant. Answer in one word where you can."


def _cli(*args: str, env: dict | None = None, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sicog.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _assemble(world: Path, out: Path) -> Path:
    """CLIP-L/336's geometry and a Qwen2-architecture LM, few and narrow layers, random weights, assembled in bf16."""
    texts = [
        t
        for rec in list(read_jsonl(world / "base.jsonl")) + list(read_jsonl(world / "reasoning.jsonl"))
        for t in (turn["value"] for turn in rec["conversations"])
    ]
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=336, patch_size=14)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    foundation_parts(out, texts, 600, vision, text, generation={"max_new_tokens": 16})
    made = _cli("model", "assemble", "--vision", str(out / "clip"), "--llm", str(out / "lm"), "--out", str(out / "llava"), "--config", str(PAPER))
    assert made.returncode == 0, made.stderr[-2000:]
    return out / "llava"


def _llava_cot(rec: dict) -> dict:
    """A LLaVA-CoT row (Xu et al.'s tagged answer: prose in each section, no step headers) from a world
    VQA record and its CoT twin, whose step bodies become the caption and the reasoning."""
    question = rec["da"]["conversations"][0]["value"].replace("<image>\n", "")
    bodies = [line for line in rec["cot"]["conversations"][1]["value"].splitlines() if line.strip() and not line.startswith("Step ")]
    answer = rec["da"]["conversations"][1]["value"]
    value = (
        f"<SUMMARY> I will look at the image and answer the question. </SUMMARY>\n\n<CAPTION> {bodies[1]} </CAPTION>\n\n"
        f"<REASONING> {' '.join(bodies[2:-1] or bodies[:1])} </REASONING>\n\n<CONCLUSION> {answer} </CONCLUSION>"
    )
    return {
        "id": rec["da"]["id"].removesuffix("-da"),
        "image": rec["da"]["image"],
        "conversations": [{"from": "human", "value": f"{question}\n<image>"}, {"from": "gpt", "value": value}],
    }


def _public_formats(world: Path, data: Path) -> Path:
    """The world's roles in the public sets' formats; returns the catalog."""
    import datasets

    shutil.copytree(world / "images", data / "images")
    # align: LLaVA-558k's JSON array, `<image>` after the text.
    align = [
        {**r, "conversations": [{"from": "human", "value": "Describe the image.\n<image>"}, r["conversations"][1]]} for r in read_jsonl(world / "align.jsonl")
    ]
    (data / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(align))
    # instruct: LLaVA-665k's JSON array: system turns, and text-only rows that reuse image rows' ids (as the public file does).
    instruct = []
    for i, rec in enumerate(read_jsonl(world / "base.jsonl")):
        rec.pop("meta", None)
        if i % 3 == 0:
            rec["conversations"] = [{"from": "system", "value": SYSTEM}, *rec["conversations"]]
        instruct.append(rec)
    reused = [
        {"id": instruct[k]["id"], "conversations": [{"from": "human", "value": f"Say the number {k}."}, {"from": "gpt", "value": str(k)}]} for k in range(3)
    ]
    (data / "llava_v1_5_mix665k.json").write_text(json.dumps(instruct + reused))
    # perception: the world's DD + CoD records (JSONL); reasoning: LLaVA-CoT, converted to DA + CoT when read.
    shutil.copy(world / "perception.jsonl", data / "perception.jsonl")
    reasoning = list(read_jsonl(world / "reasoning.jsonl"))
    pairs = [{"da": reasoning[k], "cot": reasoning[k + 1]} for k in range(0, len(reasoning) - 1, 2) if reasoning[k]["id"].endswith("-da")]
    (data / "LLaVA-CoT-100k.jsonl").write_text("".join(json.dumps(_llava_cot(p)) + "\n" for p in pairs))
    # pool: a Hugging Face parquet file, images inside (as `datasets` writes an Image column).
    pool = list(read_jsonl(world / "pool_images.jsonl"))
    datasets.Dataset.from_list(
        [{"id": r["id"], "image": {"bytes": (world / r["image"]).read_bytes(), "path": None}} for r in pool],
        features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()}),
    ).to_parquet(str(data / "pool-00000-of-00001.parquet"))
    for name in ("pool_vqa", "pool_text", "truth", "heldout"):
        shutil.copy(world / f"{name}.jsonl", data / f"{name}.jsonl")
    catalog = {
        "align": {"name": "llava558k", "uri": "blip_laion_cc_sbu_558k.json", "images": "."},
        "instruct": {"name": "llava665k", "uri": "llava_v1_5_mix665k.json", "images": "."},
        "perception": {"name": "dd-cod", "uri": "perception.jsonl", "images": "."},
        "reasoning": {"name": "llava-cot", "uri": "LLaVA-CoT-100k.jsonl", "format": "llava-cot", "images": "."},
        "pool_images": {"name": "pool", "uri": "pool-00000-of-00001.parquet", "format": "hf", "prefix_ids": False},
        "pool_vqa": {"uri": "pool_vqa.jsonl", "images": ".", "prefix_ids": False},
        "pool_text": {"uri": "pool_text.jsonl", "prefix_ids": False},
        "truth": {"uri": "truth.jsonl", "prefix_ids": False},
        "heldout": {"uri": "heldout.jsonl", "images": "."},
    }
    (data / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    return data / "catalog.yaml"


def _overrides(catalog: Path, model: Path, endpoint: str, cache: Path) -> list[str]:
    """Sizes only (and what a CPU cannot run: DeepSpeed's ranks on 8 GPUs, vLLM inside lmms-eval, NV-Embed)."""
    sets = [
        f"data.catalog={catalog}",
        f"data.pool_per_cycle={POOL_PER_CYCLE}",
        f"model.start={model}",
        "train.nproc=1",
        "train.deepspeed=none",  # DeepSpeed's bf16 engine wants an accelerator
        "train.max_length=1024",
        *(f"train.{name}.{key}={value}" for name in ("align", "pretrain", "instruct", "warmup") for key, value in STAGE_SIZE.items()),
        f"sample.endpoint={endpoint}",
        "sample.served_model=sampler",
        "sample.max_new_tokens=12",
        "sample.shards=1",
        "curate.embedder=sentence-transformers/all-MiniLM-L6-v2",
        "curate.trust_remote_code=false",
        # NV-Embed-v2's thresholds mean nothing to MiniLM on a random model's text: keep every instance.
        "curate.caption={similarity: embedding, threshold: -1.0}",
        "curate.vqa={similarity: hybrid, threshold: -1.0}",
        "curate.text_top_k=4",
        "eval.benchmarks=[mmstar, sicog_heldout_vqa]",
        "eval.benchmark_limit=2",
        "eval.backend=llava_hf",
        f"eval.datasets_cache={cache}",
        "eval.max_new_tokens=8",
        "cluster.trainer=torchrun",
    ]
    return [arg for item in sets for arg in ("--set", item)]


@pytest.mark.slow
@pytest.mark.timeout(3000)  # two cycles of the paper config at dry-run sizes under kfp.local, lmms-eval included
def test_paper_config_runs_a_two_cycle_series_on_public_format_data(tmp_path):
    python = _eval_python()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    world = tmp_path / "world"
    pools = ["--set", "world.n_pool_images=8", "--set", "world.n_pool_vqa=8", "--set", "world.n_pool_text=8"]  # two cycles' slices each
    made = _cli("world", "--config", str(MICRO), *pools, "--out", str(world), env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    catalog = _public_formats(world, tmp_path / "data")
    model = _assemble(world, tmp_path / "model")
    assert json.loads((model / "config.json").read_text())["dtype"] == "bfloat16"
    cache = tmp_path / "datasets-cache"
    (tmp_path / "cache-work").mkdir()
    subprocess.run(
        [str(python), "-c", _MMSTAR_CACHE, str(cache), str(tmp_path / "cache-work")], check=True, capture_output=True, env={**env, "HF_HOME": str(cache)}
    )
    (cache / lmms.CACHE_INDEX).write_text(json.dumps({"benchmarks": {"mmstar": "Lin-Chen/MMStar"}}))

    check = _cli("data", "check", str(catalog), "--json", env=env)
    assert check.returncode == 0, check.stderr[-2000:]
    roles = json.loads(check.stdout)["roles"]
    instruct = json.loads((tmp_path / "data" / "llava_v1_5_mix665k.json").read_text())
    mix = roles["instruct"]["llava665k"]
    assert mix["records"] == len(instruct) and mix["quarantined"] == 0  # rows reusing an id with other content are kept
    assert mix["system"] == sum(1 for r in instruct if r["conversations"][0]["from"] == "system")
    assert roles["reasoning"]["llava-cot"]["records"] == 2 * len(list(read_jsonl(tmp_path / "data" / "LLaVA-CoT-100k.jsonl")))  # DA + CoT each

    with TransformersServer(sampling_copy(model, tmp_path / "served")) as upstream:
        args = standin.engine_parser("vllm").parse_args([str(model), "--served-model-name", "sampler", "--port", "0", "--seed", "0", "--dtype", "bfloat16"])
        httpd = standin.serve(standin.Engine("vllm", args, upstream.url, upstream.model), "127.0.0.1", 0)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        sets = _overrides(catalog, model, endpoint, cache)
        series = tmp_path / "series"
        runs = []
        try:
            for k in (1, 2):
                out = tmp_path / f"run{k}"
                proc = _cli("cycle", "--config", str(PAPER), *sets, "--series", str(series), "--out", str(out), env=env)
                assert proc.returncode == 0, proc.stderr[-4000:]
                runs.append(json.loads((out / "metrics.json").read_text()))
                if k == 1:
                    shutil.rmtree(out)  # the series folder alone carries cycle 2
        finally:
            httpd.shutdown()

    records = [(uri, record) for uri, record in lineage.read_series(str(series))]
    assert sorted(r["cycle"] for _, r in records) == [1, 2]
    first, second = sorted((r for _, r in records), key=lambda r: r["cycle"])
    # Cycle 2 started from cycle 1's model, read from the series folder (its --out is gone).
    assert second["config"]["model"]["foundation"] is True
    # Each cycle sampled its own slice of the parquet pool: disjoint.
    for metrics in runs:
        assert metrics["curation"]["caption"]["instances"] == POOL_PER_CYCLE
    pools = []
    for uri, record in records:
        folder = Path(uri).parent
        candidates = list(folder.glob("pipeline/*/collect-candidates*/candidates/candidates.jsonl"))
        pools.append({row["id"] for path in candidates for row in read_jsonl(path) if row.get("task") == "caption"})
    assert all(pools) and not pools[0] & pools[1]
    # Both cycles measured the public benchmark offline, and the held-out split through lmms-eval too.
    for uri, record in records:
        [evaluation] = Path(uri).parent.glob("pipeline/*/evaluate*/evaluation/eval.json")
        for name, scores in json.loads(evaluation.read_text()).items():
            assert scores["mmstar_n"] == scores["sicog_heldout_vqa_n"] == 2 and scores["vqa_n"] > 0, (name, scores)
            assert set(record["heldout"][name]) == {"vqa_accuracy", "caption_attribute_recall", "mmstar", "sicog_heldout_vqa"}
    # The gate: compared what both sides measured, and its decision follows from the numbers.
    gate = runs[1]["promotion"]
    assert {"vqa_accuracy", "mmstar", "sicog_heldout_vqa"} <= set(gate["compared"])
    assert gate["promoted"] == all(c["passed"] is not False for c in gate["checks"])
    assert gate["previous"]["cycle"] == 1
    # The paper's dtype: every trained model saved in bf16.
    for uri, record in records:
        for model_uri in record["models"].values():
            config = json.loads((Path(lineage.resolve_uri(model_uri, uri)) / "config.json").read_text())
            assert config["dtype"] == "bfloat16", model_uri
