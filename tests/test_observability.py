"""Observability (issue 21, part 4): JSON log lines of real sicog processes (SICOG_LOG_FORMAT=json, the
images' default), plain output unchanged otherwise, the log context (run id, cycle, step), the run id
reaching task and training pods, the per-run engine pods admitted by the chart's MinIO NetworkPolicy
and selected by its PodMonitor, and the score counts pushed to a Pushgateway.

The chart's monitoring objects themselves (ServiceMonitor / PodMonitor against the Prometheus
Operator's CRDs, the Grafana dashboard) are checked in tests/test_helm.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from sicog import console, logs
from sicog.cluster.serving import server_manifests
from sicog.config import SicogConfig

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "micro.yaml"
RUN = "0b8a2d7e-5f0c-4b5e-9a51-3c2f1e0d9a01"  # a KFP run id
NS = "sicog"


def run(args: list[str], *, json_logs: bool = True, **env: str) -> subprocess.CompletedProcess:
    """A sicog process as a pod runs it: no terminal, the image's SICOG_LOG_FORMAT (or none)."""
    environ = {k: v for k, v in os.environ.items() if k not in (logs.FORMAT_ENV, logs.RUN_ID_ENV, logs.LEVEL_ENV)}
    environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **env)
    if json_logs:
        environ[logs.FORMAT_ENV] = "json"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=environ, cwd=ROOT, check=False)


def json_lines(text: str) -> list[dict]:
    """Every line of `text` as a log object: each one parses as JSON and has the keys, in order."""
    lines = text.splitlines()
    objects = [json.loads(line) for line in lines]
    for obj in objects:
        assert list(obj)[: len(logs.KEYS)] == list(logs.KEYS), obj
        assert set(obj) - set(logs.KEYS) <= {"exception", "stack"}, obj
        stamp = datetime.fromisoformat(obj["time"])  # Python 3.11 reads the trailing Z
        assert obj["time"].endswith("Z") and stamp.utcoffset().total_seconds() == 0, obj["time"]
        assert obj["level"] in ("debug", "info", "warning", "error", "critical") and isinstance(obj["message"], str)
    return objects


# --- JSON logs of real processes ---------------------------------------------------------------------


def test_a_step_process_logs_one_json_object_a_line_with_its_context(tmp_path):
    proc = run(["-m", "sicog.cli", "world", "--config", str(MICRO), "--out", str(tmp_path / "world")], SICOG_RUN_ID=RUN)
    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc.stderr)
    assert [line["message"].split(":")[1].split(" in ")[0].strip() for line in lines] == ["started", "done"]
    assert all(line["run_id"] == RUN and line["cycle"] == 1 and line["step"] == "world" and line["logger"] == "sicog.steps" for line in lines)
    assert "\x1b[" not in proc.stderr + proc.stdout  # no progress bar, no colour codes
    assert json.loads(proc.stdout)["base.jsonl"] > 0  # the result: one compact JSON line on stdout
    assert len(proc.stdout.splitlines()) == 1


def test_errors_usage_status_lines_warnings_and_crashes_are_json_lines(tmp_path):
    # A user error of the CLI, and the training entry point's usage error: one error object each, exit 2.
    proc = run(["-m", "sicog.cli", "world", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "w")])
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = json_lines(proc.stderr)
    assert line["level"] == "error" and line["logger"] == "sicog.cli" and "missing.yaml" in line["message"]
    proc = run(["-m", "sicog.train"], SICOG_RUN_ID=RUN)
    assert proc.returncode == 2
    [line] = json_lines(proc.stderr)
    assert line["level"] == "error" and line["message"].startswith("usage: python -m sicog.train") and line["run_id"] == RUN

    # What a KFP task pod's process does: KFP's executor configures logging first (basicConfig on
    # stdout), then a step opens. Status lines, library warnings, retries and the final crash: all JSON on stderr.
    script = """
import logging, sys, warnings
logging.basicConfig(stream=sys.stdout, format="[KFP Executor %(asctime)s %(levelname)s]: %(message)s", level=logging.INFO)
from sicog import logs
from sicog.console import progress, say
from sicog.steps import StepIO
from sicog.steps._io import open_step
with open_step(StepIO("score", sys.argv[1]), cycle=3):
    say("server sicog-perception-1", "ready at http://10.0.0.7:8000/v1")
    say("pytorchjob j", "could not delete it\\nsecond line", stderr=True)
    warnings.warn("a library warning")
    logging.getLogger("sicog.retry").warning("scorer x Embed: attempt 1 failed (UNAVAILABLE); retrying in 0.5 s")
    with progress() as bar:
        bar.add_task("scoring", total=3)
    logging.info("Wrote executor output file")
    raise RuntimeError("boom")
"""
    proc = run(["-c", script, str(tmp_path / "out")], SICOG_RUN_ID=RUN)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    lines = json_lines(proc.stderr)
    by_message = {line["message"]: line for line in lines}
    status = by_message["server sicog-perception-1: ready at http://10.0.0.7:8000/v1"]
    assert status["logger"] == "sicog.status" and status["level"] == "info" and (status["step"], status["cycle"], status["run_id"]) == ("score", 3, RUN)
    assert by_message["pytorchjob j: could not delete it\nsecond line"]["level"] == "warning"  # one object, newline escaped
    assert any(line["logger"] == "py.warnings" and "a library warning" in line["message"] for line in lines)
    assert by_message["scorer x Embed: attempt 1 failed (UNAVAILABLE); retrying in 0.5 s"]["logger"] == "sicog.retry"
    assert by_message["Wrote executor output file"]["logger"] == "root"  # KFP's own lines, through the JSON handler
    crash = lines[-1]
    assert crash["level"] == "critical" and crash["message"] == "uncaught RuntimeError: boom"
    assert "Traceback" in crash["exception"] and crash["exception"].rstrip().endswith("RuntimeError: boom")
    assert crash["step"] == "" and crash["cycle"] is None  # the step had closed by the time the exception reached the top
    failed = lines[-2]  # ... and said so, with its context
    assert failed["message"].startswith("step score: failed after ") and failed["message"].endswith("(RuntimeError)")
    assert (failed["step"], failed["cycle"], failed["run_id"]) == ("score", 3, RUN)


def test_without_json_logs_the_output_people_read_is_unchanged(tmp_path):
    script = """
from sicog import logs
from sicog.console import say
logs.configure()
say("server s", "ready")
say("pytorchjob j", "could not delete it", stderr=True)
import logging
logging.getLogger("sicog.retry").info("not shown: below the plain level")
logging.getLogger("sicog.retry").warning("shown")
"""
    proc = run(["-c", script], json_logs=False)
    assert proc.returncode == 0
    assert proc.stdout == "server s: ready\n" and proc.stderr == "pytorchjob j: could not delete it\nwarning: shown\n"
    proc = run(["-m", "sicog.train"], json_logs=False)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: python -m sicog.train")
    proc = run(["-c", script], json_logs=False, SICOG_LOG_LEVEL="info")
    assert "info: not shown: below the plain level\n" in proc.stderr


# --- in-process: the formatter, the context, the progress bar ----------------------------------------


def test_context_nests_reaches_threads_and_is_restored(monkeypatch):
    monkeypatch.setenv(logs.RUN_ID_ENV, "run-from-env")
    assert logs.current() == {"run_id": "run-from-env", "cycle": None, "step": ""}
    seen = {}
    with logs.context(step="score", cycle=2):
        with logs.context(step="score:caption"):
            assert logs.current() == {"run_id": "run-from-env", "cycle": 2, "step": "score:caption"}
            worker = threading.Thread(target=lambda: seen.update(logs.current()))  # a thread does not inherit contextvars
            worker.start()
            worker.join()
        assert logs.current()["step"] == "score"
    assert seen == {"run_id": "run-from-env", "cycle": 2, "step": "score:caption"}
    assert logs.current() == {"run_id": "run-from-env", "cycle": None, "step": ""}


def test_json_formatter_writes_the_keys_in_order_and_the_exception(monkeypatch):
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.LogRecord("sicog.x", logging.ERROR, __file__, 1, "failed on %s", ("shard 3",), sys.exc_info())
    with logs.context(step="sample:caption:shard-00003", cycle=1, run_id=RUN):
        line = json.loads(logs.JsonFormatter().format(record))
    assert list(line) == [*logs.KEYS, "exception"]
    assert line["message"] == "failed on shard 3" and line["level"] == "error" and line["step"] == "sample:caption:shard-00003"
    assert line["exception"].endswith("ValueError: bad value")
    record = logging.LogRecord("sicog.x", logging.INFO, __file__, 1, 'é ✓ "quoted"', None, None)
    assert json.loads(logs.JsonFormatter().format(record))["message"] == 'é ✓ "quoted"'


def test_progress_is_off_and_say_is_json_with_json_logs(monkeypatch, capsys):
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    assert console.progress().disable is True
    console.say("server s", "ready")
    out, err = capsys.readouterr()
    line = json.loads(err)
    assert out == "" and line["logger"] == "sicog.status" and line["message"] == "server s: ready"
    monkeypatch.setenv(logs.FORMAT_ENV, "plain")
    assert console.progress().disable is False


# --- the run id reaches task pods and training pods ---------------------------------------------------


def test_every_task_pod_gets_the_run_id_from_its_kfp_label_and_training_pods_inherit_it(tmp_path, monkeypatch):
    import yaml
    from kfp import compiler, dsl

    from sicog.cluster.pytorchjob import _env
    from sicog.config import ClusterConfig
    from sicog.pipelines.placement import RUN_ID_FIELD, place

    @dsl.component(base_image="python:3.11")
    def noop():
        pass

    @dsl.pipeline(name="placed")
    def placed():
        place(noop(), ClusterConfig(s3_secret="sicog-s3"), cache=False)

    compiler.Compiler().compile(placed, str(tmp_path / "p.yaml"))
    _, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    [executor] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert executor["fieldPathAsEnv"] == [{"name": "SICOG_RUN_ID", "fieldPath": RUN_ID_FIELD}]
    assert RUN_ID_FIELD == "metadata.labels['pipeline/runid']"  # the label KFP's API server puts on every pod of a run

    cfg = SicogConfig()
    monkeypatch.delenv(logs.RUN_ID_ENV, raising=False)
    assert "SICOG_RUN_ID" not in {e.name for e in _env(cfg)}
    monkeypatch.setenv(logs.RUN_ID_ENV, RUN)  # the launching task's
    assert {e.name: e.value for e in _env(cfg)}["SICOG_RUN_ID"] == RUN


# --- per-run engine pods and the chart ------------------------------------------------------------------


def _engine_pod(engine: str) -> tuple[dict, dict]:
    """(pod template metadata, pod spec) of a run's sampler server, as sicog.cluster.serving deploys it."""
    cfg = SicogConfig.model_validate({"sample": {"engine": engine}, "cluster": {"namespace": NS, "s3_secret": "sicog-s3"}})
    deployment, _ = server_manifests(cfg, run_id=RUN, role="perception" if engine != "tgi" else "backbone", model_uri="s3://sicog/models/base", namespace=NS)
    template = deployment["spec"]["template"]
    return template["metadata"], template["spec"]


def _matches(peer: dict, labels: dict, namespace: str) -> bool:
    """Whether a NetworkPolicy peer admits a pod with `labels` in `namespace` (a policy in NS)."""
    selector = peer.get("podSelector", {})
    if not selector.get("matchLabels", {}).items() <= labels.items() or selector.get("matchExpressions"):
        return False
    if "namespaceSelector" not in peer:
        return namespace == NS
    expressions = peer["namespaceSelector"]["matchExpressions"]
    return all(e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "In" and namespace in e["values"] for e in expressions)


@pytest.mark.parametrize("engine", ["vllm", "sglang", "tgi"])
def test_engine_pods_are_admitted_to_the_bundled_minio_and_scraped_by_the_podmonitor(engine):
    from test_helm import one, render

    meta, spec = _engine_pod(engine)
    labels = meta["labels"]
    docs = render("minio.enabled=true", "sampler.enabled=false", "monitoring.enabled=true", "networkPolicy.clientNamespaces={kubeflow-user}")
    policy = one(docs, "NetworkPolicy", "sicog-minio")
    [rule] = policy["spec"]["ingress"]
    assert {"port": "api", "protocol": "TCP"} in rule["ports"]
    # The init container fetches the model from MinIO: the engine pod must match a peer, in the
    # release's namespace and in a client namespace alike; without the label it would not.
    assert any(_matches(peer, labels, NS) for peer in rule["from"])
    assert any(_matches(peer, labels, "kubeflow-user") for peer in rule["from"])
    unlabelled = {k: v for k, v in labels.items() if k != "sicog.io/client"}
    assert not any(_matches(peer, unlabelled, NS) for peer in rule["from"])
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-model"]

    monitor = one(docs, "PodMonitor", "sicog-engines")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert NS in monitor["spec"]["namespaceSelector"]["matchNames"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    [container] = spec["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]} and endpoint["path"] == "/metrics"
    # The relabelings read the pod's labels as Prometheus sanitises them: run_id, role, engine exist.
    sanitized = {"__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in k): v for k, v in labels.items()}
    relabelled = {r["targetLabel"]: sanitized[r["sourceLabels"][0]] for r in endpoint["relabelings"]}
    assert relabelled == {"run_id": RUN, "role": labels["sicog.io/role"], "engine": engine}
    if engine == "sglang":  # SGLang serves /metrics only when asked to
        assert "--enable-metrics" in container["args"]


# --- the score counts on a Pushgateway -------------------------------------------------------------------


class _Gateway(BaseHTTPRequestHandler):
    pushed: ClassVar[list] = []

    def do_PUT(self):  # the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        _Gateway.pushed.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_score_counts_are_pushed_per_task_grouped_by_run_and_cycle(caplog):
    from sicog.steps.score import push_counts

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        figures = {"caption": {"instances": 10, "kept": 7}, "vqa": {"instances": 12, "kept": 3}}
        push_counts(f"http://127.0.0.1:{server.server_port}", figures, run_id=RUN, cycle=2)
    finally:
        server.shutdown()
        server.server_close()
    [(path, body)] = _Gateway.pushed
    assert path == f"/metrics/job/sicog-score/cycle/2/run_id/{RUN}"
    for line in ('sicog_score_instances{task="caption"} 10.0', 'sicog_score_kept{task="caption"} 7.0', 'sicog_score_kept{task="vqa"} 3.0'):
        assert line in body.splitlines(), body
    # Best effort: a gateway that is not there is one warning, not the step's failure.
    with caplog.at_level(logging.WARNING, logger="sicog.steps.score"):
        push_counts(f"http://127.0.0.1:{server.server_port}", figures, run_id=RUN, cycle=2, timeout_s=2)
    assert any("could not push the score counts" in r.getMessage() for r in caplog.records)
