"""Benchmark: the concurrent remote sampler vs the same requests sent one at a time (target: >= 4x).

Both sides are the same `RemoteSampler` code against the same `transformers serve` process
(continuous batching on, loopback), on the demo-sized model's language backbone (default
`ModelConfig`, random weights): continuous batching applies to causal LMs only in transformers serve,
and the paper answers text-only prompts with the backbone LLM. Only `concurrency` differs. Each side
sends its own text-only requests (one per candidate, own seed); the ratio is of candidates/s, with
output tokens/s beside it (a random model's answer lengths vary a little).

Run: python benchmarks/remote_sampling.py [--sequential 8] [--concurrent 128] [--concurrency 64] [--new-tokens 48] [--cb-num-blocks 64]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sicog.config import ModelConfig
from sicog.generate.plan import plan_requests
from sicog.generate.remote import RemoteSampler
from sicog.generate.serving import TransformersServer, sampling_copy
from sicog.models import init_model
from sicog.prompts import all_prompt_texts


def _texts() -> list[str]:
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "pink"]
    shapes = ["circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring"]
    return all_prompt_texts() + [f"What colour is the {s}? The {s} is {c}." for c in colours for s in shapes]


def _requests(n: int, tag: str) -> list[dict]:
    records = [{"id": f"{tag}-{i}", "conversations": [{"from": "human", "value": f"Describe shape number {i} in detail."}]} for i in range(n)]
    return plan_requests(records, "text", 1, cycle_seed=0)


def _run(sampler: RemoteSampler, requests: list[dict]) -> tuple[float, int, int]:
    sampler.output_tokens = 0
    start = time.perf_counter()
    rows = list(sampler.generate(requests))
    seconds = time.perf_counter() - start
    failed = sum(r.get("error") is not None for r in rows)
    return seconds, sampler.output_tokens, failed


def _peak_rss_mb(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequential", type=int, default=8, help="requests sent one at a time")
    ap.add_argument("--concurrent", type=int, default=128, help="requests sent by the concurrent sampler")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight (sample.concurrency)")
    ap.add_argument("--new-tokens", type=int, default=48, help="max_tokens per candidate")
    ap.add_argument("--cb-num-blocks", type=int, default=64, help="KV-cache blocks of the server (transformers sizes it from RAM otherwise: GiBs on CPU)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_model(Path(tmp) / "demo-model", _texts(), ModelConfig(), image_size=64, seed=0)
        served = sampling_copy(model_dir, Path(tmp) / "backbone", text_only=True)
        t0 = time.perf_counter()
        cb_args = ["--cb-num-blocks", str(args.cb_num_blocks), "--cb-block-size", "64"]
        with TransformersServer(served, continuous_batching=True, extra_args=cb_args) as server:
            startup = time.perf_counter() - t0
            make = lambda c: RemoteSampler(server.base_url, tmp, served_model=server.model, concurrency=c, max_new_tokens=args.new_tokens)  # noqa: E731
            _run(make(4), _requests(8, "warm"))  # first requests initialise the continuous-batching manager
            seq_s, seq_tok, seq_fail = _run(make(1), _requests(args.sequential, "seq"))
            con_s, con_tok, con_fail = _run(make(args.concurrency), _requests(args.concurrent, "con"))
            server_rss = _peak_rss_mb(server.proc.pid)

    seq_cps, con_cps = args.sequential / seq_s, args.concurrent / con_s
    print("remote sampling: concurrent RemoteSampler vs one request at a time, same transformers serve process")
    print(
        f"  server: transformers serve --continuous-batching, demo-sized backbone (ModelConfig defaults, random weights), "
        f"CPU, {os.cpu_count()} cores; started in {startup:.1f} s"
    )
    print(f"  settings: max_tokens {args.new_tokens}, temperature 0.7, top_p 0.95, one seeded request per candidate; server {' '.join(cb_args)}")
    print(
        f"  sequential (concurrency 1): {args.sequential} candidates in {seq_s:.2f} s = {seq_cps:.2f} candidates/s, "
        f"{seq_tok / seq_s:.1f} output tokens/s ({seq_tok / args.sequential:.1f} tokens/candidate), failures {seq_fail}"
    )
    print(
        f"  concurrent (concurrency {args.concurrency}): {args.concurrent} candidates in {con_s:.2f} s = {con_cps:.2f} candidates/s, "
        f"{con_tok / con_s:.1f} output tokens/s ({con_tok / args.concurrent:.1f} tokens/candidate), failures {con_fail}"
    )
    print(f"  ratio: {con_cps / seq_cps:.1f}x candidates/s, {(con_tok / con_s) / (seq_tok / seq_s):.1f}x output tokens/s (target >= 4x)")
    print(f"  peak RSS: benchmark process {_peak_rss_mb():.0f} MiB, server {server_rss:.0f} MiB")


if __name__ == "__main__":
    main()
