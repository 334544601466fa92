"""`--out s3://...` end to end against a real S3 API server on loopback (moto): single steps read
and write the bucket through sicog.store, a whole micro cycle publishes its run folder once (every
step's output sealed with its manifest, lineage.json last), and wrong credentials are one line before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import moto.settings
import pytest
from typer.testing import CliRunner

from sicog import lineage, store
from sicog.cli import app
from sicog.store import MANIFEST

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests/micro.yaml"


def test_single_steps_through_the_bucket(bucket):
    runner = CliRunner()
    run = f"s3://{bucket}/run"
    result = runner.invoke(app, ["world", "--config", str(MICRO), "--out", f"{run}/world"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["model", "init", "--config", str(MICRO), "--world", f"{run}/world", "--out", f"{run}/model"])
    assert result.exit_code == 0, result.output
    files = store.list_files(run)
    assert f"world/{MANIFEST}" in files and "world/base.jsonl" in files and any(f.startswith("world/images/") for f in files)
    assert f"model/{MANIFEST}" in files and "model/model.safetensors" in files
    assert json.loads(store.read_text(f"{run}/model/step.json"))["step"] == "model-init"
    with store.local_input(f"{run}/model") as model:  # every file verified against the manifest
        assert (model / "lineage.json").is_file()


def test_wrong_credentials_one_line_nothing_written(bucket, monkeypatch):
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks every signature
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    result = CliRunner().invoke(app, ["world", "--config", str(MICRO), "--out", f"s3://{bucket}/run/world"])
    assert result.exit_code == 2
    message = " ".join(line.strip() for line in result.output.splitlines())  # one message (rich wraps it at the terminal width)
    assert message.count("error:") == 1 and "Traceback" not in message, result.output
    assert f"access denied to s3://{bucket}" in message and "check the credentials" in message and "not-the-secret" not in message
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    assert store.list_files(f"s3://{bucket}") == []


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a micro cycle under kfp.local, its steps through the bucket: ~3 min here
def test_cycle_with_out_in_s3(bucket, tmp_path):
    out = f"s3://{bucket}/runs/micro"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "sicog.cli", "cycle", "--config", str(MICRO), "--out", out], capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {out}/report.html" in proc.stdout
    files = store.list_files(out)
    for name in ("metrics.json", "report.html", "cycle.log", "lineage.json", MANIFEST):
        assert name in files, name
    metrics = json.loads(store.read_text(f"{out}/metrics.json"))
    assert set(metrics["heldout"]) == {"base", "cycle", "control"}
    # One address per output: every step's output is its artifact folder under pipeline/, sealed with its
    # manifest and published once; lineage.json names the models relative to the run's folder.
    record = json.loads(store.read_text(f"{out}/lineage.json"))
    models = record["models"]
    assert set(models) == {"base", "cycle", "perception", "reasoning"}
    for name, uri in models.items():
        assert uri.startswith("pipeline/") and uri.endswith("/trained"), (name, uri)
        manifest = json.loads(store.read_text(f"{out}/{uri}/{MANIFEST}"))["files"]
        assert len(manifest["model.safetensors"]["sha256"]) == 64
    trained = [f for f in files if f.endswith("/trained/model.safetensors")]
    assert len(trained) == 8, trained  # stage 1, base, 2 warm-ups, cycle and control stages 1.5 + 2: each written once
    assert not [f for f in files if f.endswith((".tmp", ".part"))]  # no temporary objects left
    with store.local_input(lineage.resolve_uri(models["cycle"], f"{out}/lineage.json")) as model:  # sha256-verified download
        assert json.loads((model / "lineage.json").read_text())[-1]["name"] == "cycle/instruct"
    # The local kfp.local work folder and the store's staging folders are gone (KFP's own
    # lightweight-component launcher leaves its `mktemp -d` folders of component code).
    assert [p.name for p in tmp.iterdir() if p.name.startswith("sicog-")] == []
