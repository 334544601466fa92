"""Benchmark: sicog.store transfers vs the plain minio client, same files, same S3 server.

Targets (issue 5): throughput ratio sicog.store / plain minio >= 0.8 one stream at a time, and > 1
with parallel transfers of many files.

The server is moto's S3 API server in its own process on loopback (it keeps objects in memory and
temporary files, so the totals stay at a few hundred MiB). Two file sets: 8 x 64 MiB (large,
multipart) and 200 x 256 KiB (many small files). For each set and direction:
  plain minio:  a loop of `fput_object` / `fget_object` (the client's defaults), one file at a time
  sicog.store:  `upload_dir` / `download_dir`, which also compute and write the sha256 manifest,
                check access first, and verify every download against the manifest;
                once with SICOG_S3_PARALLEL=1 (one stream) and once with the default 8
Each run is timed once (best-of-1; the machine may be shared: ratios are measured in one run).

Run: python benchmarks/store.py [--large 8x64] [--small 200x256]  (sizes: COUNTxMiB and COUNTxKiB)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minio import Minio

from sicog import store

BUCKET = "sicog-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the moto S3 server did not start")


def make_files(root: Path, count: int, size: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"part-{i:04d}.bin"
        with open(root / name, "wb") as f:
            left = size
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
        names.append(name)
    return names


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_set(label: str, client: Minio, src: Path, names: list[str], total: int, work: Path, parallel_target: bool) -> list[str]:
    mib = total / 2**20
    lines = [f"{label}: {len(names)} files, {mib:,.0f} MiB"]

    def plain_up():
        for n in names:
            client.fput_object(BUCKET, f"plain/{n}", str(src / n))

    def plain_down():
        for n in names:
            client.fget_object(BUCKET, f"plain/{n}", str(work / "plain" / n))

    results = {}
    t_up, t_down = timed(plain_up), timed(plain_down)
    results["plain"] = (t_up, t_down)
    store.delete(f"s3://{BUCKET}/plain")
    shutil.rmtree(work / "plain", ignore_errors=True)
    for parallel in (1, 8):
        os.environ["SICOG_S3_PARALLEL"] = str(parallel)
        uri = f"s3://{BUCKET}/store-{parallel}"
        t_up = timed(lambda: store.upload_dir(src, uri))
        t_down = timed(lambda: store.download_dir(uri, work / "store"))
        results[parallel] = (t_up, t_down)
        store.delete(uri)
        shutil.rmtree(work / "store", ignore_errors=True)
    p_up, p_down = results["plain"]
    lines.append(f"  plain minio fput/fget loop:     upload {mib / p_up:7.1f} MiB/s   download {mib / p_down:7.1f} MiB/s")
    for parallel in (1, 8):
        up, down = results[parallel]
        lines.append(
            f"  sicog.store, {parallel} at a time:       upload {mib / up:7.1f} MiB/s   download {mib / down:7.1f} MiB/s"
            f"   ratio vs plain: upload {p_up / up:.2f}, download {p_down / down:.2f}, both {(p_up + p_down) / (up + down):.2f}"
        )
    one, par = results[1], results[8]
    ratio_one, ratio_par = sum(results["plain"]) / sum(one), sum(results["plain"]) / sum(par)
    # The "> 1 with parallel transfers" is about many files; for a few large files against one
    # moto process (one Python server on the same 2 cores) parallel uploads are server-bound.
    verdict = f"(target > 1) -> {'PASS' if ratio_par > 1 else 'FAIL'}" if parallel_target else "(no target: a few large files)"
    lines.append(f"  one stream ratio {ratio_one:.2f} (target >= 0.8) -> {'PASS' if ratio_one >= 0.8 else 'FAIL'}; parallel ratio {ratio_par:.2f} {verdict}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", default="8x64", help="COUNTxMiB of the large-file set")
    parser.add_argument("--small", default="200x256", help="COUNTxKiB of the many-files set")
    args = parser.parse_args()
    large_n, large_mib = map(int, args.large.split("x"))
    small_n, small_kib = map(int, args.small.split("x"))

    proc, endpoint = start_server()
    os.environ.update(SICOG_S3_ENDPOINT=f"http://{endpoint}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_REGION="us-east-1")
    client = Minio(endpoint, access_key="bench", secret_key="bench-secret", secure=False, region="us-east-1")
    client.make_bucket(BUCKET)
    tmp = Path(tempfile.mkdtemp(prefix="sicog-bench-store-"))
    try:
        report = []
        for label, count, size in (("large files", large_n, large_mib << 20), ("many small files", small_n, small_kib << 10)):
            src = tmp / f"src-{count}"
            src.mkdir()
            names = make_files(src, count, size)
            report += bench_set(label, client, src, names, count * size, tmp, parallel_target=label == "many small files")
            shutil.rmtree(src)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"server: moto S3 API server, own process, loopback {endpoint}; client: this process (2-core machine, may be shared)")
    print("\n".join(report))
    print(f"peak RSS (client): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
