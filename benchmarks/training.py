"""Training throughput of sicog's stage code (`python -m sicog.train`) vs a plain transformers Trainer loop.

Claims measured in one run, on the same tiny LLaVA and the same records (one process, 1 thread):
1. overhead: tokens/s (non-pad tokens) of sicog's stage (lazy encoding, skip accounting, progress,
   logs) vs a plain Trainer on features encoded up front. Two ratios: against the plain loop's
   training time alone, and against its encoding + training time (sicog encodes inside its loop).
   Target: >= 0.95.
2. length grouping: tokens/s and padding with `train.group_by_length` on a mixed-length set.
3. torchrun: wall time of a 1-step stage launched through torchrun (what the pipeline's train
   component does) minus the same stage in-process = the launch overhead per task.
Peak RSS of this process is printed at the end.

Usage: python benchmarks/training.py [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import PrinterCallback, Trainer, TrainingArguments  # noqa: E402

from sicog.config import ModelConfig, StageConfig, TrainConfig  # noqa: E402
from sicog.models import init_model, load_model  # noqa: E402
from sicog.train.data import Collator, encode_records  # noqa: E402
from sicog.train.trainer import set_trainable, train_stage  # noqa: E402

MODEL = ModelConfig(vision_hidden=64, vision_layers=2, lm_hidden=128, lm_layers=2, heads=4, kv_heads=2, intermediate=256, vocab_size=600)
WORDS = "red blue green circle square triangle left right top bottom near far large small shape image".split()


def make_data(root: Path, n: int, mixed: bool) -> list[dict]:
    """Records on 32-px images; `mixed`: answers of 4..160 words (short VQA to long captions), else ~40."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        words = int(rng.choice([4, 8, 60, 160])) if mixed else 40
        answer = " ".join(rng.choice(WORDS, words))
        records.append(
            {
                "id": f"r{i}",
                "image": f"img/{i}.png",
                "conversations": [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": answer}],
            }
        )
    return records


def plain_trainer(model_dir: Path, records, root, out: Path, steps: int, batch: int) -> tuple[float, float, int]:
    """(encode seconds, train seconds, non-pad tokens) of a plain Trainer on pre-encoded features."""
    start = time.perf_counter()
    model, processor = load_model(model_dir)
    features, _ = encode_records(records, processor, root, 512)
    encode = time.perf_counter() - start
    set_trainable(model, "all")
    model.train()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=max(1, steps // 50),
        remove_unused_columns=False,
        seed=0,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=Collator(processor.tokenizer.pad_token_id))
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    return encode, time.perf_counter() - start, int(trainer.state.num_input_tokens_seen)


def sicog_stage(model_dir: Path, records, root, out: Path, steps: int, batch: int, group: bool = False) -> dict:
    stage = StageConfig(learning_rate=1e-3, max_steps=steps, batch_size=batch)
    start = time.perf_counter()
    log = train_stage(model_dir, records, root, out, stage, TrainConfig(max_length=512, group_by_length=group), seed=0, name="bench", threads=1)
    log["wall_seconds"] = time.perf_counter() - start  # load + lazy encoding + training + save
    return log


def padding_fraction(records, root, model_dir, batch: int, group: bool, steps: int) -> float:
    """Share of padded positions in the batches the stage would see (from its sampler, no training)."""
    from sicog.train.data import LazyRecords
    from sicog.train.trainer import GroupedSampler

    _, processor = load_model(model_dir)
    lengths = LazyRecords(records, processor, root, 512).lengths
    order = list(GroupedSampler(lengths, batch, 0)) if group else list(np.random.default_rng(0).permutation(len(lengths)))
    padded = real = 0
    for k in range(0, min(len(order), steps * batch), batch):
        chunk = [lengths[i] for i in order[k : k + batch]]
        padded += max(chunk) * len(chunk)
        real += sum(chunk)
    return 1 - real / padded


def torchrun_overhead(model_dir: Path, root: Path, tmp: Path) -> tuple[float, float]:
    """(in-process seconds, torchrun seconds) of the same 1-step stage through the training entry point
    (`python -m sicog.train REQUEST`, what every rank runs)."""
    from sicog.train.request import TrainRequest

    config = {"train": {"max_length": 512, "instruct": {"max_steps": 1, "batch_size": 4}}}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    times = []
    for launcher in ([sys.executable], [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]):
        request = TrainRequest.of(
            config, stage="instruct", data="base", name="bench/instruct", model=str(model_dir), world=str(root), out=str(tmp / f"tr{len(times)}"), resume=True
        )
        uri = request.save(str(tmp / f"request{len(times)}.json"))
        start = time.perf_counter()
        subprocess.run([*launcher, "-m", "sicog.train", uri], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        uniform, mixed_root = tmp / "uniform", tmp / "mixed"
        records = make_data(uniform, 160, mixed=False)
        mixed = make_data(mixed_root, 320, mixed=True)
        texts = [t["value"] for r in records + mixed for t in r["conversations"]]
        model_dir = init_model(tmp / "model", texts, MODEL, image_size=32, seed=0)
        (uniform / "base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

        sicog_stage(model_dir, records[:16], uniform, tmp / "warm", 3, args.batch)  # warm caches and lazy imports
        enc, plain_s, plain_tok = plain_trainer(model_dir, records, uniform, tmp / "plain", args.steps, args.batch)
        log = sicog_stage(model_dir, records, uniform, tmp / "sicog", args.steps, args.batch)
        plain_tps, plain_all_tps = plain_tok / plain_s, plain_tok / (plain_s + enc)
        sicog_tps = log["tokens_seen"] / log["train_seconds"]
        print(f"tokens: sicog {log['tokens_seen']}, plain {plain_tok} (same records and order: {log['tokens_seen'] == plain_tok})")
        print(f"plain Trainer: {plain_tps:,.0f} tokens/s training ({plain_s:.1f} s) + encoding up front {enc:.1f} s -> {plain_all_tps:,.0f} tokens/s")
        print(f"sicog train  : {sicog_tps:,.0f} tokens/s ({log['train_seconds']:.1f} s, lazy encoding inside)")
        print(f"ratio sicog / plain (training time only)      : {sicog_tps / plain_tps:.3f}")
        print(f"ratio sicog / plain (encoding + training time): {sicog_tps / plain_all_tps:.3f}   target >= 0.95")

        flat = sicog_stage(model_dir, mixed, mixed_root, tmp / "flat", args.steps, args.batch, group=False)
        grouped = sicog_stage(model_dir, mixed, mixed_root, tmp / "grouped", args.steps, args.batch, group=True)
        pad_flat = padding_fraction(mixed, mixed_root, model_dir, args.batch, False, args.steps)
        pad_grouped = padding_fraction(mixed, mixed_root, model_dir, args.batch, True, args.steps)
        flat_tps, grouped_tps = flat["tokens_seen"] / flat["train_seconds"], grouped["tokens_seen"] / grouped["train_seconds"]
        print(
            f"mixed lengths: random batches {flat_tps:,.0f} tokens/s (padding {pad_flat:.0%}), "
            f"length-grouped {grouped_tps:,.0f} tokens/s (padding {pad_grouped:.0%}): gain x{grouped_tps / flat_tps:.2f}"
        )

        inproc, launched = torchrun_overhead(model_dir, uniform, tmp)
        print(
            f"1-step stage via `sicog train`: in-process launch {inproc:.1f} s, through torchrun {launched:.1f} s: "
            f"torchrun overhead {launched - inproc:.1f} s per task"
        )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (this process; subprocesses excluded)")


if __name__ == "__main__":
    main()
