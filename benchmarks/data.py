"""Benchmark: sicog.data's training pass keeps memory flat in the dataset size, and streams from S3.

Targets (data-layer issue): peak RSS of a training data pass over 200k records within 1.2x of the
pass over 10k records; records/s with images in S3 (moto) >= 0.5x of the same pass on a local folder.

Memory: synthetic LLaVA-665k-style JSONL records (caption turns, ~250 bytes each) whose images are a
small set of 32x32 PNGs shared by path (in nested folders), so the file grows with the record count
and the image bytes do not. Each pass runs in its own subprocess (`--pass CATALOG`): open the role,
iterate every record in batches of 64 and decode its image (`RoleData.batches`), then report
`resource.getrusage(RUSAGE_SELF).ru_maxrss`: the peak of the whole process, index included.

Throughput: the same kind of records (2,000) read once with images in a local folder and once with
annotation file and images in a moto S3 server (own process, loopback), through sicog.store (images
fetched per batch, SICOG_S3_PARALLEL at a time; records of a batch that share an image fetch it once).
Two layouts: every record its own image, and 4 consecutive records per image (a caption and its
questions, as in VQA sets and the demo world). One S3 GET per image is bounded by the moto server
(one Python process on the same cores), whose sequential GET rate is printed as the ceiling. Each timed once; ratios are
measured in one run on a 2-core machine that may be shared.

Run: python benchmarks/data.py [--small 10000] [--large 200000] [--s3-records 2000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
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
    """(records, quarantined, seconds) of one training pass with images."""
    data = open_role(load_catalog(catalog_uri), "instruct")
    start = time.perf_counter()
    records = quarantined = 0
    for batch in data.batches(BATCH):
        for im in batch.images:
            im.convert("RGB")
        records += len(batch.records)
        quarantined += len(batch.quarantined)
    return records, quarantined, time.perf_counter() - start


def child(catalog: str) -> None:
    records, quarantined, seconds = data_pass(catalog)
    print(
        json.dumps(
            {"records": records, "quarantined": quarantined, "seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        )
    )


def measure(tmp: Path, n: int, images: list[str]) -> dict:
    make_records(tmp / f"records-{n}.jsonl", n, images)
    catalog = write_catalog(tmp / f"catalog-{n}.yaml", f"records-{n}.jsonl", ".")
    out = subprocess.run([sys.executable, __file__, "--pass", str(catalog)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["file_mib"] = (tmp / f"records-{n}.jsonl").stat().st_size / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--s3-records", type=int, default=2_000)
    parser.add_argument("--pass", dest="catalog", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.catalog:
        return child(args.catalog)

    tmp = Path(tempfile.mkdtemp(prefix="sicog-bench-data-"))
    proc = None
    try:
        images = make_images(tmp, 64)
        small, large = measure(tmp, args.small, images), measure(tmp, args.large, images)
        rss_ratio = large["peak_rss_mib"] / small["peak_rss_mib"]

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
        streams = {}
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

    print("training data pass: every record normalized and its image decoded, batches of 64, one subprocess per size")
    for label, r in (("small", small), ("large", large)):
        print(
            f"  {label}: {r['records']:>9,} records ({r['file_mib']:6.1f} MiB JSONL, 64 shared 32x32 PNGs): "
            f"peak RSS {r['peak_rss_mib']:7.1f} MiB, {r['records'] / r['seconds']:8,.0f} records/s, {r['quarantined']} quarantined"
        )
    print(f"  peak RSS ratio large/small {rss_ratio:.2f} (target <= 1.2) -> {'PASS' if rss_ratio <= 1.2 else 'FAIL'}")
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
