"""Benchmark: the training data path keeps memory flat in the dataset size, and sicog.data streams from S3.

Targets (data-layer and scale issues): peak RSS per rank of the training data path over 665k
records within 1.2x of the same path over 10k records; records/s with images in S3 (moto) >= 0.5x
of the same pass on a local folder.

Memory: synthetic LLaVA-665k-style records in one JSON array (LLaVA's own container): image records
with 1-4 question/answer turns (answers of 40-400 characters), 10% text-only rows, a system turn on
every 20th row, and 2% of the rows reusing an earlier row's id with other content, as the public file does;
images are 64 shared 32x32 PNGs in nested folders, so the file grows with the record count and the
image bytes do not. Each size runs in its own subprocess (`--pass WORLD`), the code path one
training rank runs (sicog.train.trainer): `training_records` over the catalog's instruct role (data
"base"), `LazyRecords` with a tiny LLaVA processor (sicog.models.init_model, tokenizer trained
offline: chat template, exact lengths, image headers), then `--steps` batches through a DataLoader
with the trainer's length-grouped sampler and Collator (records encoded with their pixels). It
reports `resource.getrusage(RUSAGE_SELF).ru_maxrss`: the peak of the whole process, imports
(torch, transformers) and indexes included. The batches are a fixed number at both sizes: what
grows with the data is what the path builds before the first batch.

Throughput: records of the same kind (2,000) read once with images in a local folder and once with
annotation file and images in a moto S3 server (own process, loopback), through sicog.store (images
fetched per batch, SICOG_S3_PARALLEL at a time; records of a batch that share an image fetch it once).
Two layouts: every record its own image, and 4 consecutive records per image (a caption and its
questions, as in VQA sets and the demo world). One S3 GET per image is bounded by the moto server
(one Python process on the same cores), whose sequential GET rate is printed as the ceiling. Each timed once; ratios are
measured in one run on a 2-core machine that may be shared.

Run: python benchmarks/data.py [--small 10000] [--large 665000] [--steps 100] [--s3-records 2000 | --no-s3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from sicog import store  # noqa: E402
from sicog.data import load_catalog, open_role  # noqa: E402
from store import start_server  # noqa: E402  (the moto server the store benchmark starts)

BUCKET = "sicog-bench-data"
BATCH = 64


def make_images(root: Path, count: int) -> list[str]:
    names = []
    for k in range(count):
        rel = f"images/{k % 10:02d}/{k:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (k * 7 % 256, k * 13 % 256, k * 29 % 256)).save(buf, format="PNG")
        (root / rel).write_bytes(buf.getvalue())
        names.append(rel)
    return names


def make_records(path: Path, n: int, images: list[str], per_image: int = 0) -> None:
    """n records; image i % len(images), or with per_image > 0 runs of per_image records on one image."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            rec = {"id": f"{i:09d}", "image": images[i // per_image if per_image else i % len(images)],
                   "conversations": [{"from": "human", "value": "Describe the picture in detail.\n<image>"},
                                     {"from": "gpt", "value": f"A small square of one colour, number {i}, on a plain background."}]}  # fmt: skip
            fh.write(json.dumps(rec) + "\n")


def write_catalog(path: Path, uri: str, images: str) -> Path:
    path.write_text(yaml.safe_dump({"instruct": [{"name": "bench", "uri": uri, "images": images}]}))
    return path


def data_pass(catalog_uri: str) -> tuple[int, int, float]:
    """(records, quarantined, seconds) of one RoleData.batches pass with images (the S3 comparison)."""
    data = open_role(load_catalog(catalog_uri), "instruct")
    start = time.perf_counter()
    records = quarantined = 0
    for batch in data.batches(BATCH):
        for im in batch.images:
            im.convert("RGB")
        records += len(batch.records)
        quarantined += len(batch.quarantined)
    return records, quarantined, time.perf_counter() - start


# --- memory: the training data path -------------------------------------------------------------

QUESTIONS = ["What is in the image?", "Describe the picture in detail.", "What colour is the object?", "How many objects are there?",
             "Where is the object placed?", "What might happen next?"]  # fmt: skip
WORDS = "a small square of one colour sits on a plain background near the left edge while light falls from above".split()


def llava665k_record(i: int, images: list[str]) -> dict:
    """One LLaVA-665k-style row, a function of i only (so 10k rows are the first 10k of 665k)."""
    rng = random.Random(i)
    turns = []
    for t in range(rng.randint(1, 4)):
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 70)))
        turns += [{"from": "human", "value": rng.choice(QUESTIONS)}, {"from": "gpt", "value": f"{answer} ({i}.{t})."}]
    if i % 20 == 7:
        turns.insert(0, {"from": "system", "value": "You are a careful visual assistant."})
    rid = f"{i - 490 if i % 500 >= 490 else i:012d}"  # 2% of rows reuse the id of a row of their kind, with other content
    if i % 10 == 3:  # text-only (ShareGPT-style)
        return {"id": f"sg_{rid}", "conversations": turns}
    first = next(k for k, turn in enumerate(turns) if turn["from"] == "human")
    turns[first] = {"from": "human", "value": f"<image>\n{turns[first]['value']}" if i % 2 else f"{turns[first]['value']}\n<image>"}
    return {"id": rid, "image": images[i % len(images)], "conversations": turns}


def make_world(root: Path, n: int, images: list[str]) -> Path:
    """A world folder: catalog.yaml with an instruct role of n records in one JSON array."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "llava_v1_5_mix665k.json", "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for i in range(n):
            fh.write(("," if i else "") + json.dumps(llava665k_record(i, images)) + "\n")
        fh.write("]\n")
    (root / "catalog.yaml").write_text(yaml.safe_dump({"instruct": [{"name": "llava665k", "uri": "llava_v1_5_mix665k.json", "images": ".."}]}))
    return root


def training_pass(world: str, model_dir: str, steps: int, batch_size: int) -> dict:
    """The training data path of one rank over `world` (see the module docstring)."""
    import torch
    from transformers import AutoProcessor

    from sicog.config import validate_config
    from sicog.data.training import training_records
    from sicog.train.data import Collator, LazyRecords
    from sicog.train.trainer import GroupedSampler

    cfg = validate_config({"seed": 0})
    processor = AutoProcessor.from_pretrained(model_dir)
    start = time.perf_counter()
    records, quarantine = training_records(cfg, "base", Path(world), None)
    indexed = time.perf_counter()
    dataset = LazyRecords(records, processor, world, cfg.train.max_length)
    measured = time.perf_counter()
    sampler = GroupedSampler(dataset.lengths, batch_size, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=Collator(processor.tokenizer.pad_token_id), num_workers=0)
    tokens = images = 0
    for step, batch in enumerate(loader):
        if step == steps:
            break
        tokens += int(batch["attention_mask"].sum())
        images += len(batch.get("pixel_values", ()))
    return {
        "records": len(records),
        "trainable": len(dataset),
        "quarantined": len(quarantine),
        "skipped": dict(dataset.skipped),
        "index_s": indexed - start,
        "measure_s": measured - indexed,
        "batches_s": time.perf_counter() - measured,
        "tokens": tokens,
        "images": images,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(tmp: Path, n: int, images: list[str], model_dir: Path, steps: int) -> dict:
    world = make_world(tmp / f"world-{n}", n, images)
    out = subprocess.run(
        [sys.executable, __file__, "--pass", str(world), "--model", str(model_dir), "--steps", str(steps)], check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["file_mib"] = (world / "llava_v1_5_mix665k.json").stat().st_size / 2**20
    shutil.rmtree(world, ignore_errors=True)
    return result


def tiny_processor(directory: Path, images: list[str]) -> Path:
    """A tiny LLaVA (32x32 images, 8-px patches) whose tokenizer is trained on the records' text."""
    from sicog.config import ModelConfig
    from sicog.models import init_model

    texts = [t["value"] for i in range(2000) for t in llava665k_record(i, images)["conversations"]]
    tiny = ModelConfig(vision_hidden=32, vision_layers=2, lm_hidden=32, lm_layers=1, heads=2, kv_heads=1, intermediate=64, vocab_size=400)
    return Path(init_model(directory, texts, tiny, image_size=32, seed=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=665_000)
    parser.add_argument("--steps", type=int, default=100, help="batches through the DataLoader per size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--s3-records", type=int, default=2_000)
    parser.add_argument("--no-s3", action="store_true", help="only the memory measurement")
    parser.add_argument("--pass", dest="world", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.world:
        print(json.dumps(training_pass(args.world, args.model, args.steps, args.batch_size)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="sicog-bench-data-"))
    proc = None
    streams = {}
    try:
        images = make_images(tmp, 64)
        model_dir = tiny_processor(tmp / "model", images)
        small, large = (measure(tmp, n, images, model_dir, args.steps) for n in (args.small, args.large))
        rss_ratio = large["peak_rss_mib"] / small["peak_rss_mib"]

        if not args.no_s3:
            s3dir = tmp / "s3"
            s3dir.mkdir()
            s3_images = make_images(s3dir, args.s3_records)
            proc, endpoint = start_server()
            os.environ.update(SICOG_S3_ENDPOINT=f"http://{endpoint}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_REGION="us-east-1")
            from minio import Minio

            Minio(endpoint, access_key="bench", secret_key="bench-secret", secure=False, region="us-east-1").make_bucket(BUCKET)
            os.environ["SICOG_S3_PARALLEL"] = "16"  # enough image GETs in flight to hide the round trips
            store.upload_dir(s3dir / "images", f"s3://{BUCKET}/images")
            start = time.perf_counter()
            for rel in s3_images[:300]:
                store.read_bytes(f"s3://{BUCKET}/{rel}")
            ceiling = 300 / (time.perf_counter() - start)
            for per_image in (1, 4):  # 1: every record its own image; 4: a caption and 3 questions per image (VQA sets, the world)
                name = f"records-{per_image}.jsonl"
                make_records(s3dir / name, args.s3_records, s3_images, per_image)
                local = data_pass(str(write_catalog(s3dir / f"catalog-{per_image}.yaml", name, ".")))
                store.write_bytes(f"s3://{BUCKET}/{name}", (s3dir / name).read_bytes())
                remote = data_pass(str(write_catalog(tmp / f"s3-catalog-{per_image}.yaml", f"s3://{BUCKET}/{name}", f"s3://{BUCKET}")))
                streams[per_image] = (local, remote)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"training data path of one rank (training_records -> LazyRecords -> DataLoader with the grouped sampler and Collator,"
        f" {args.steps} batches of {args.batch_size}), one subprocess per size"
    )
    for label, r in (("small", small), ("large", large)):
        print(
            f"  {label}: {r['records']:>9,} records ({r['file_mib']:6.1f} MiB JSON array, 64 shared 32x32 PNGs), {r['trainable']:,} trainable,"
            f" {r['quarantined']} quarantined, skipped {r['skipped'] or 0}: peak RSS {r['peak_rss_mib']:7.1f} MiB;"
            f" index {r['index_s']:.1f} s, lengths {r['measure_s']:.1f} s, batches {r['batches_s']:.1f} s ({r['images']} images, {r['tokens']:,} tokens)"
        )
    print(f"  peak RSS ratio large/small {rss_ratio:.2f} (target <= 1.2) -> {'PASS' if rss_ratio <= 1.2 else 'FAIL'}")
    if streams:
        print(
            f"streaming {args.s3_records:,} records (32x32 PNGs), batches of {BATCH}, {os.environ['SICOG_S3_PARALLEL']} image GETs in flight;"
            f" moto's own ceiling here: {ceiling:,.0f} GETs/s one at a time"
        )
    for per_image, ((n_local, _, t_local), (n_remote, _, t_remote)) in streams.items():
        ratio = (n_remote / t_remote) / (n_local / t_local)
        print(
            f"  {per_image} record(s) per image: local folder {n_local / t_local:7,.0f} records/s, moto S3 {n_remote / t_remote:7,.0f} records/s,"
            f" ratio S3/local {ratio:.2f} (target >= 0.5) -> {'PASS' if ratio >= 0.5 else 'FAIL'}"
        )


if __name__ == "__main__":
    main()
