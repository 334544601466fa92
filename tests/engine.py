"""A stand-in for a serving engine's container (vLLM, SGLang, TGI), run by tests/kubeapi.py's kubelet.

It takes the engine container's real arguments (as sicog.cluster.serving writes them, /models paths
already rewritten to the fake pod's folder) and parses them with the flags that engine's CLI has, so
an argument the engine would refuse fails the pod here too (exit 2: CrashLoopBackOff). Then it serves
the model the way the engine would for our client, in front of `transformers serve`:

- the model is served under `--served-model-name` (vLLM / SGLang answer 404 for another `model`);
  TGI ignores `model`;
- vLLM and SGLang answer `n` choices per chat completion, by fanning out n requests to transformers
  serve (which refuses `n`): vLLM seeds choice i with seed + i; SGLang copies the request's seed to
  every choice, and honours it only with --enable-deterministic-inference (else: unseeded). TGI ignores `n`;
- `GET /health` is 200 once the model is loaded (the server only listens from then on).

`transformers serve` samples only if the model's generation config says so: the model is served from
a sampling_copy. In a pod, `--host 0.0.0.0` means the pod's address: FAKE_POD_IP (the Service's
loopback IP, 127.0.0.k) is bound instead. Each request is logged to stdout (the pod's log) as one
JSON line: {"n", "seeds", "model"}. SIGTERM stops it (and its `transformers serve`) at any point, even
while the model loads; it also stops once the process that started it is gone (a test run killed
from outside), and removes its sampling copy.

    python tests/engine.py --engine vllm -- /path/model --served-model-name perception --port 8000 ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def engine_parser(engine: str) -> argparse.ArgumentParser:
    """The subset of each engine's server flags that sicog.cluster.serving uses; dest names are shared."""
    p = argparse.ArgumentParser(prog=engine)
    if engine == "vllm":  # `vllm serve MODEL ...`
        p.add_argument("model")
        p.add_argument("--served-model-name", dest="served")
        p.add_argument("--host", default="0.0.0.0")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--max-num-seqs", dest="batch", type=int, default=256)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--tensor-parallel-size", dest="tp", type=int, default=1)
        p.add_argument("--dtype", default="auto", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    elif engine == "sglang":  # `python -m sglang.launch_server ...`
        p.add_argument("--model-path", dest="model", required=True)
        p.add_argument("--served-model-name", dest="served")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=30000)
        p.add_argument("--max-running-requests", dest="batch", type=int, default=256)
        p.add_argument("--random-seed", dest="seed", type=int)
        p.add_argument("--tp-size", dest="tp", type=int, default=1)
        p.add_argument("--dtype", default="auto", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
        p.add_argument("--enable-metrics", action="store_true")
        p.add_argument("--enable-deterministic-inference", dest="deterministic", action="store_true")
    elif engine == "tgi":  # `text-generation-launcher ...`
        p.add_argument("--model-id", dest="model", required=True)
        p.add_argument("--hostname", dest="host", default="0.0.0.0")
        p.add_argument("--port", type=int, default=3000)
        p.add_argument("--max-concurrent-requests", dest="batch", type=int, default=128)
        p.add_argument("--num-shard", dest="tp", type=int, default=1)
        p.add_argument("--dtype", choices=["float16", "bfloat16"])  # TGI's choices: no float32
    else:
        raise SystemExit(f"engine.py: unknown engine {engine}")
    return p


LOG_LOCK = threading.Lock()


class Engine:
    def __init__(self, engine: str, args: argparse.Namespace, upstream_url: str, upstream_model: str):
        self.engine, self.args = engine, args
        self.upstream_url, self.upstream_model = upstream_url, upstream_model
        self.slots = threading.Semaphore(args.batch)  # the engine's batch capacity
        self.takes_n = engine in ("vllm", "sglang")

    def _upstream(self, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{self.upstream_url}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {"error": {"message": exc.read().decode(errors="replace")[:500], "code": exc.code}}

    def chat(self, body: dict) -> tuple[int, dict]:
        served = self.args.served or self.args.model
        if self.engine != "tgi" and body.get("model") not in (None, served):
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "type": "NotFoundError", "code": 404}}
        if body.get("stream"):
            return 400, {"error": {"message": "the stand-in does not stream", "code": 400}}
        n = (body.pop("n", None) or 1) if self.takes_n else 1
        body.pop("n", None)
        seed = body.pop("seed", None)
        if self.engine == "sglang":  # one sampling_seed copied to all n choices; honoured only when deterministic
            seeds = [seed if getattr(self.args, "deterministic", False) else None] * n
        else:  # vLLM: choice i is seeded seed + i
            seeds = [None if seed is None else seed + i for i in range(n)]
        with LOG_LOCK:  # one whole line per request, whatever the threads do
            sys.stdout.write(json.dumps({"n": n, "seeds": seeds, "model": body.get("model")}) + "\n")
            sys.stdout.flush()
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        with self.slots:
            for i, s in enumerate(seeds):
                status, out = self._upstream({**body, "model": self.upstream_model, **({"seed": s} if s is not None else {})})
                if status != 200:
                    return status, out
                choice = out["choices"][0]
                choices.append({**choice, "index": i})
                for key in usage:
                    usage[key] += (out.get("usage") or {}).get(key, 0)
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": choices,
            "usage": usage,
        }


def serve(engine: Engine, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, code: int, body: dict | str) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                return self._reply(200, "")
            if self.path == "/v1/models":
                return self._reply(200, {"object": "list", "data": [{"id": engine.args.served or engine.args.model, "object": "model"}]})
            self._reply(404, {"error": {"message": f"no route {self.path}", "code": 404}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path != "/v1/chat/completions":
                return self._reply(404, {"error": {"message": f"no route {self.path}", "code": 404}})
            self._reply(*engine.chat(body))

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def exit_with_parent(every_s: float = 1.0) -> None:
    """SIGTERM to this stand-in once the process that started it (the test run's kubelet) is gone, however
    that ended (a run killed from outside runs no teardown): a stand-in never outlives its test run."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    top = argparse.ArgumentParser()
    top.add_argument("--engine", required=True)
    top.add_argument("rest", nargs=argparse.REMAINDER)
    ns = top.parse_args(argv)
    rest = ns.rest[1:] if ns.rest[:1] == ["--"] else ns.rest
    args = engine_parser(ns.engine).parse_args(rest)
    host = os.environ.get("FAKE_POD_IP") or args.host

    # SIGTERM (the kubelet deleting the pod, or exit_with_parent) from the start: while the model loads it
    # unwinds main, whose `finally` stops what has started; once serving, the server shuts down.
    server = upstream = None

    def stop(signum, frame):
        if server is None:
            raise SystemExit(128 + signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    exit_with_parent()

    from sicog.generate.serving import TransformersServer, sampling_copy

    work = Path(tempfile.mkdtemp(prefix="engine-"))
    try:
        upstream = TransformersServer(sampling_copy(args.model, work / "served"))
        upstream.start()
        server = serve(Engine(ns.engine, args, upstream.url, upstream.model), host, args.port)
        print(f"{ns.engine} stand-in: serving {args.model} as {args.served or args.model} on http://{host}:{args.port}", flush=True)
        server.serve_forever()
    finally:
        if server is not None:
            server.server_close()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
