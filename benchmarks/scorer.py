"""Benchmark + load test of the gRPC scorer service (`sicog serve scorer`), loopback only.

Part 1, throughput (target: ratio >= 0.9; server peak RSS with MiniLM <= 1.5 GiB):
  in-process: sentence-transformers `SentenceTransformer.encode(texts, batch_size=B,
  normalize_embeddings=True)` over all texts at once (its best case: one length sort over the lot);
  gRPC: the same texts as Embed requests of B texts from 8 concurrent clients (threads, one channel
  each) to a server subprocess whose Embedder uses the same B. Texts are distinct, caption-like, 20
  to 120 words (SICOG detailed captions), so the service gains nothing from deduplication. Each side
  is timed best-of-N, alternating, so a burst of load elsewhere hurts both alike. The server's peak
  RSS is VmHWM of its process. The embeddings of both sides must agree to 1e-5.
Part 2, load (targets: 0 errors; SIGTERM loses no accepted request):
  16 concurrent clients send 2,000 ScoreGroups requests in all (one instance each: 3 candidate
  answers of 3-12 words, as sampler shards send them): errors counted, p50/p99 latency reported.
  Then the clients run again and SIGTERM hits the server during the load: each call must either get
  a full answer, or UNAVAILABLE (refused, never accepted); the server's own count of accepted calls
  must equal the answered ones and the calls the clients got answers for.

Both parts bound their time (--texts, --requests, timeouts); exit status 1 if a correctness check
fails (errors, lost calls, disagreeing embeddings); performance targets are printed, not enforced.

Run: python benchmarks/scorer.py [--batch-size 32] [--texts 256] [--requests 2000] [--part all|throughput|load]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import grpc
import numpy as np

from sicog.scorer.client import ScorerClient
from sicog.scorer.v1 import scorer_pb2, scorer_pb2_grpc

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "pink", "brown", "teal"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring", "oval", "arrow"]
SIZES = ["large", "small", "medium-sized", "tiny", "big"]
PLACES = [
    "in the top left corner",
    "in the top right corner",
    "at the bottom left",
    "at the bottom right",
    "in the centre",
    "near the left edge",
    "near the right edge",
    "along the top",
    "along the bottom",
]
CLAUSES = [
    "A {size} {colour} {shape} sits {place}.",
    "Next to it, a {size} {colour} {shape} appears {place}, slightly overlapping the border.",
    "The background is a flat {colour} colour with no texture or gradient.",
    "There is also a {colour} {shape} {place}, drawn with a thin {colour2} outline.",
    "The {shape} {place} is {size} and filled with solid {colour}.",
    "Overall the image shows simple geometric shapes arranged loosely, with the {colour} {shape} drawing the eye first.",
    "A {colour2} border frames the whole image.",
]


def captions(n: int, min_words: int, max_words: int, seed: int) -> list[str]:
    """Distinct caption-like texts of min..max words (uniform target length)."""
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    out, seen = [], set()
    while len(out) < n:
        target, words = int(rng.integers(min_words, max_words + 1)), []
        while len(words) < target:
            words += pick(CLAUSES).format(size=pick(SIZES), colour=pick(COLOURS), colour2=pick(COLOURS), shape=pick(SHAPES), place=pick(PLACES)).split()
        text = " ".join(words[:target]).rstrip(",.") + "."
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def start_server(batch_size: int, grace_s: float = 30.0, threads: int = 16, torch_threads: int = 0) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sicog.cli",
            "serve",
            "scorer",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--batch-size",
            str(batch_size),
            "--grace-s",
            str(grace_s),
            "--threads",
            str(threads),
            "--torch-threads",
            str(torch_threads),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+:\d+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"server did not start: {line}{proc.stdout.read()}")
    address = match.group(1)
    with ScorerClient(address, retries=60, backoff_s=0.25, max_backoff_s=1.0) as client:
        client.info()  # retried until the model is loaded
    return proc, address


def stop_server(proc: subprocess.Popen, timeout_s: float = 60) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout_s)
    return out


def peak_rss_gib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20


# --- part 1: throughput ---------------------------------------------------------------------------


def _in_process(model, texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - start, vectors


def _through_grpc(address: str, texts: list[str], batch_size: int, clients: int) -> tuple[float, np.ndarray]:
    chunks = [(a, texts[a : a + batch_size]) for a in range(0, len(texts), batch_size)]
    channels = [ScorerClient(address, retries=0) for _ in range(clients)]
    out = np.empty((len(texts), channels[0].dimension), dtype=np.float32)
    for c in channels:
        c.info()  # connect before the clock starts
    lock, queue = threading.Lock(), list(reversed(chunks))

    def worker(client: ScorerClient) -> None:
        while True:
            with lock:
                if not queue:
                    return
                a, chunk = queue.pop()
            out[a : a + len(chunk)] = client.encode(chunk)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, channels))
    elapsed = time.perf_counter() - start
    for c in channels:
        c.close()
    return elapsed, out


def throughput(args) -> bool:
    import torch
    from sentence_transformers import SentenceTransformer

    from sicog.curate.embedder import resolve_model

    texts = captions(args.texts, 20, 120, seed=0)
    words = [len(t.split()) for t in texts]
    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    proc, address = start_server(args.batch_size, torch_threads=args.server_torch_threads)
    try:
        warm = captions(64, 20, 120, seed=1)
        _in_process(model, warm, args.batch_size)
        _through_grpc(address, warm, args.batch_size, args.clients)
        t_local, t_grpc = [], []
        for _ in range(args.repeats):  # alternate, so load elsewhere on the machine hits both sides
            t, local = _in_process(model, texts, args.batch_size)
            t_local.append(t)
            t, remote = _through_grpc(address, texts, args.batch_size, args.clients)
            t_grpc.append(t)
        rss = peak_rss_gib(proc.pid)
    finally:
        server_out = stop_server(proc)
    err = float(np.abs(local - remote).max())
    local_tps, grpc_tps = len(texts) / min(t_local), len(texts) / min(t_grpc)
    ratio = grpc_tps / local_tps
    print(
        f"texts: {len(texts)} distinct captions, {min(words)}-{max(words)} words (mean {statistics.mean(words):.0f}); "
        f"batch size {args.batch_size}; torch threads: in-process {torch.get_num_threads()}, server "
        f"{args.server_torch_threads or 'default'}; {os.cpu_count()} CPUs (shared machine)"
    )
    print(f"in-process sentence-transformers encode: {local_tps:,.1f} texts/s (best of {args.repeats}: {min(t_local):.2f} s)")
    print(f"through gRPC, {args.clients} concurrent clients:   {grpc_tps:,.1f} texts/s (best of {args.repeats}: {min(t_grpc):.2f} s)")
    print(f"ratio gRPC / in-process: {ratio:.3f} (target >= 0.9) -> {'PASS' if ratio >= 0.9 else 'FAIL'}")
    print(f"server peak RSS (VmHWM): {rss:.2f} GiB (goal <= 1.5 GiB) -> {'PASS' if rss <= 1.5 else 'FAIL'}")
    print(f"agreement: max |embedding difference| {err:.2e} (required <= 1e-5)")
    print(f"server: {server_out.strip().splitlines()[-1]}")
    return err <= 1e-5


# --- part 2: load and SIGTERM ---------------------------------------------------------------------


def _requests(n: int, seed: int) -> list[scorer_pb2.ScoreGroupsRequest]:
    """One instance per request, as a sampler shard sends them: 3 candidate answers of 3-12 words."""
    texts = iter(captions(n * 3, 3, 12, seed=seed))
    return [scorer_pb2.ScoreGroupsRequest(groups=[scorer_pb2.Group(id=f"r{i}", texts=[next(texts) for _ in range(3)])], threshold=0.5) for i in range(n)]


def _full(request, response) -> bool:
    """A complete answer: every group, in order, scored."""
    return len(response.results) == len(request.groups) and all(
        r.id == g.id and r.status.code == scorer_pb2.CODE_OK and len(r.scores) == len(g.texts) and r.HasField("kept")
        for g, r in zip(request.groups, response.results)
    )


def _drive(address: str, requests: list, clients: int, stop_on_unavailable: bool, timeout_s: float) -> dict:
    """Send `requests` from `clients` threads (one channel each, no retries); count outcomes."""
    lock, pending = threading.Lock(), list(reversed(requests))
    tally = {"ok": 0, "incomplete": 0, "unavailable": 0, "errors": 0, "latencies": [], "error_kinds": set()}
    deadline = time.monotonic() + timeout_s

    def worker() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            while time.monotonic() < deadline:
                with lock:
                    if not pending:
                        return
                    request = pending.pop()
                start = time.perf_counter()
                try:
                    response = stub.ScoreGroups(request, timeout=60)
                except grpc.RpcError as exc:
                    with lock:
                        if exc.code() == grpc.StatusCode.UNAVAILABLE:
                            tally["unavailable"] += 1
                        else:
                            tally["errors"] += 1
                            tally["error_kinds"].add(f"{exc.code().name}: {exc.details()}")
                    if stop_on_unavailable and exc.code() == grpc.StatusCode.UNAVAILABLE:
                        return
                    continue
                with lock:
                    tally["latencies"].append(time.perf_counter() - start)
                    tally["ok" if _full(request, response) else "incomplete"] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def load(args) -> bool:
    proc, address = start_server(args.batch_size, grace_s=30, torch_threads=args.server_torch_threads)
    info_calls = 1  # start_server's Info
    try:
        _drive(address, _requests(32, seed=7), args.load_clients, False, 60)  # warm-up
        start = time.perf_counter()
        run = _drive(address, _requests(args.requests, seed=8), args.load_clients, False, args.timeout_s)
        elapsed = time.perf_counter() - start
        lat = np.array(run["latencies"]) * 1000
        sent = run["ok"] + run["incomplete"] + run["unavailable"] + run["errors"]
        print(
            f"load: {args.load_clients} clients, {sent} of {args.requests} ScoreGroups requests (1 group x 3 answers) in {elapsed:.1f} s "
            f"({sent / elapsed:,.0f} req/s): ok {run['ok']}, errors {run['errors'] + run['incomplete'] + run['unavailable']}; "
            f"latency p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms"
        )
        clean = run["ok"] == args.requests

        # SIGTERM in the middle of a second run: every call is answered in full or refused (UNAVAILABLE).
        result: dict = {}
        driver = threading.Thread(target=lambda: result.update(_drive(address, _requests(args.requests, seed=9), args.load_clients, True, args.timeout_s)))
        driver.start()
        time.sleep(args.sigterm_after_s)
        proc.send_signal(signal.SIGTERM)
        driver.join()
        server_out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    stats = re.search(r"accepted (\d+), answered (\d+), cut off (\d+)", server_out)
    accepted, answered, cut_off = (int(x) for x in stats.groups()) if stats else (-1, -1, -1)
    client_answers = 32 + run["ok"] + run["incomplete"] + result["ok"] + result["incomplete"] + info_calls
    print(
        f"SIGTERM after {args.sigterm_after_s:g} s of load: answered in full {result['ok']}, incomplete {result['incomplete']}, "
        f"refused (UNAVAILABLE, never accepted) {result['unavailable']}, other errors {result['errors']}"
    )
    print(f"server: accepted {accepted}, answered {answered}, cut off {cut_off}; answers the clients got: {client_answers}; exit status {proc.returncode}")
    lost = result["incomplete"] + result["errors"] + cut_off + (accepted - answered) + abs(answered - client_answers)
    print(f"accepted requests lost: {lost} (target 0) -> {'PASS' if lost == 0 and proc.returncode == 0 else 'FAIL'}")
    print(f"errors under load: {sent - run['ok']} (target 0) -> {'PASS' if clean else 'FAIL'}")
    for kind in sorted(run["error_kinds"] | result["error_kinds"]):
        print(f"  error: {kind}")
    return clean and lost == 0 and proc.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "throughput", "load"], default="all")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per Embed request = the model batch size on both sides")
    ap.add_argument("--texts", type=int, default=256, help="captions embedded per timed run")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients of the throughput part")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (best is reported)")
    ap.add_argument("--requests", type=int, default=2000, help="requests of the load part")
    ap.add_argument("--load-clients", type=int, default=16)
    ap.add_argument("--server-torch-threads", type=int, default=0, help="the server's --torch-threads (0: torch's default)")
    ap.add_argument("--sigterm-after-s", type=float, default=3.0)
    ap.add_argument("--timeout-s", type=float, default=150.0, help="bound on each load run")
    args = ap.parse_args()
    ok = True
    if args.part in ("all", "throughput"):
        ok &= throughput(args)
    if args.part in ("all", "load"):
        ok &= load(args)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"benchmark process peak RSS: {peak_mib:,.0f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
