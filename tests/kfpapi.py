"""A stand-in for the Kubeflow Pipelines REST API (v2beta1) on 127.0.0.1: it answers the calls the
kfp Client makes to create experiments, runs and recurring runs, and records every request body, so
tests can check what `sicog pipeline submit|schedule` really sends."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class KfpApi:
    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, body)
        self.experiments: dict[str, dict] = {}
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                api.requests.append(("GET", self.path, {}))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/healthz":
                    return self._reply(200, {"multi_user": False})
                if path == "/apis/v2beta1/experiments":
                    return self._reply(200, {"experiments": list(api.experiments.values()), "total_size": len(api.experiments)})
                self._reply(404, {"error": f"not found: {path}"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                api.requests.append(("POST", self.path, body))
                if self.path == "/apis/v2beta1/experiments":
                    experiment = {"experiment_id": f"exp-{len(api.experiments) + 1}", "display_name": body["display_name"]}
                    api.experiments[experiment["experiment_id"]] = experiment
                    return self._reply(200, experiment)
                if self.path == "/apis/v2beta1/runs":
                    return self._reply(200, {**body, "run_id": "run-1", "state": "PENDING"})
                if self.path == "/apis/v2beta1/recurringruns":
                    return self._reply(200, {**body, "recurring_run_id": "recurring-1", "status": "ENABLED"})
                self._reply(404, {"error": f"not found: {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posted(self, path: str) -> list[dict]:
        return [body for method, p, body in self.requests if method == "POST" and p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
