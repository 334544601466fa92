"""sicog.store against the local filesystem and a real S3 API server on loopback (moto): atomic,
verified, resumable transfers; a server that crashes mid-upload; one clear error for wrong credentials."""

import hashlib
import io
import json
import os
import threading
import time

import moto.settings
import pytest

from sicog import store
from sicog.store import MANIFEST, StoreError




def _folder(root, sizes: dict[str, int]) -> dict[str, bytes]:
    data = {}
    for name, size in sizes.items():
        data[name] = os.urandom(size)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data[name])
    return data


# --- local paths ----------------------------------------------------------------------------------


def test_uris():
    assert store.join("s3://b/run", "x/y.jsonl") == "s3://b/run/x/y.jsonl"
    assert store.join("s3://b/run/", "/x", "y") == "s3://b/run/x/y"
    assert store.join("file:///tmp/r", "a") == "file:///tmp/r/a"
    assert store.is_remote("s3://b/k") and not store.is_remote("/tmp/x") and not store.is_remote("file:///tmp/x")
    assert str(store.local_path("file:///tmp/x")) == "/tmp/x"
    with pytest.raises(StoreError, match="object storage"):
        store.local_path("s3://b/k")
    with pytest.raises(StoreError, match="gs://"):
        store.exists("gs://b/k")


def test_local_objects_and_folders(tmp_path):
    uri = f"file://{tmp_path}/run"
    store.write_text(store.join(uri, "a/b.txt"), "one")
    store.write_text(store.join(uri, "a/b.txt"), "two")
    assert store.read_text(store.join(uri, "a/b.txt")) == "two"
    assert store.list_files(uri) == ["a/b.txt"]  # no temporary file left behind
    assert store.exists(store.join(uri, "a")) and not store.exists(store.join(uri, "zz"))
    with store.local_output(store.join(uri, "step")) as out:
        (out / "m.bin").write_bytes(b"x" * 10)
    manifest = json.loads((tmp_path / "run/step" / MANIFEST).read_text())["files"]
    assert manifest == {"m.bin": {"sha256": hashlib.sha256(b"x" * 10).hexdigest(), "size": 10}}
    with pytest.raises(RuntimeError), store.local_output(store.join(uri, "step")) as out:
        raise RuntimeError("the step failed")
    assert not (tmp_path / "run/step" / MANIFEST).exists()  # a failed rewrite leaves the folder unsealed
    with store.local_input(store.join(uri, "step")) as inp:
        assert inp == tmp_path / "run/step"
    with pytest.raises(FileNotFoundError), store.local_input(store.join(uri, "nope")):
        pass
    store.delete(store.join(uri, "a"))
    assert store.list_files(uri) == ["step/m.bin"]


# --- S3 -------------------------------------------------------------------------------------------


def test_s3_objects(bucket):
    base = f"s3://{bucket}/run"
    store.write_text(store.join(base, "x/y.json"), '{"a": 1}')
    assert json.loads(store.read_text(store.join(base, "x/y.json"))) == {"a": 1}
    assert store.exists(store.join(base, "x/y.json")) and not store.exists(store.join(base, "x/nope"))
    assert store.list_files(base) == ["x/y.json"] and store.list_files(f"s3://{bucket}/other") == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes(store.join(base, "missing"))
    store.delete(store.join(base, "x"))
    assert store.list_files(f"s3://{bucket}") == []


def test_s3_folder_roundtrip_is_verified(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "PART_SIZE", 5 * 1024 * 1024)  # minio's minimum: the 11 MiB file goes multipart
    src = tmp_path / "src"
    data = _folder(src, {"model.safetensors": 11 * 1024 * 1024, "tok/vocab.json": 1000, "empty.txt": 0})
    uri = f"s3://{bucket}/run/model"
    with store.local_output(uri) as out:
        for name, blob in data.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(blob)
    assert store.list_files(uri) == sorted([*data, MANIFEST])
    assert store.exists(uri)
    with store.local_input(uri) as inp:
        assert {n: (inp / n).read_bytes() for n in data} == data
    # Someone rewrites a file behind the manifest's back: the reader refuses it.
    _raw_put(bucket, "run/model/tok/vocab.json", b"tampered")
    with pytest.raises(StoreError, match="sha256"), store.local_input(uri):
        pass
    # A folder whose writer has not finished (no manifest) is not read as a finished one.
    _raw_put(bucket, "run/half/a.txt", b"a")
    with pytest.raises(FileNotFoundError), store.local_input(f"s3://{bucket}/run/half"):
        pass
    with pytest.raises(StoreError, match="not a published folder"):
        store.download_dir(f"s3://{bucket}/run/half", tmp_path / "half")


def _raw_put(bucket, key, blob):
    store._client().put_object(bucket, key, io.BytesIO(blob), len(blob))


def test_failed_step_publishes_nothing(bucket):
    with pytest.raises(RuntimeError), store.local_output(f"s3://{bucket}/run/step") as out:
        (out / "a.txt").write_text("a")
        raise RuntimeError("the step failed")
    assert store.list_files(f"s3://{bucket}") == []


def test_wrong_credentials_one_error_nothing_written(bucket, monkeypatch):
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks every signature
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    ran = False
    with pytest.raises(StoreError) as info, store.local_output(f"s3://{bucket}/run/step") as out:
        ran = True
        (out / "a.txt").write_text("a")
    message = str(info.value)
    assert not ran  # the step never started its work
    assert "\n" not in message and f"access denied to s3://{bucket}" in message and "check the credentials" in message
    assert "not-the-secret" not in message and "sicog-test" not in message
    with pytest.raises(StoreError, match="access denied"):
        store.write_text(f"s3://{bucket}/x.txt", "x")
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    assert store.list_files(f"s3://{bucket}") == []


def test_missing_bucket_is_one_line(bucket):
    with pytest.raises(StoreError, match=r"no bucket sicog-missing-bucket at 127\.0\.0\.1"):
        store.check_access("s3://sicog-missing-bucket/run")


def test_retries_5xx(bucket, s3_server, monkeypatch):
    s3_server.fail_next = 6  # more than one request's own quick retries
    store.write_text(f"s3://{bucket}/a.txt", "a")
    assert store.read_text(f"s3://{bucket}/a.txt") == "a"
    monkeypatch.setenv("SICOG_S3_RETRY_SECONDS", "0.5")
    s3_server.fail_next = 10_000
    try:
        with pytest.raises(StoreError, match="SlowDown.*gave up after retrying"):
            store.write_text(f"s3://{bucket}/b.txt", "b")
    finally:
        s3_server.fail_next = 0


def test_server_stopped_mid_upload_and_restarted(bucket, s3_server, tmp_path, monkeypatch):
    """The upload retries through the outage and completes; a reader polling the bucket all along
    never sees a partial object, nor a manifest whose files are missing or different."""
    monkeypatch.setenv("SICOG_S3_PARALLEL", "2")
    monkeypatch.setattr(store, "PART_SIZE", 5 * 1024 * 1024)
    sizes = {f"shard-{i:02d}.bin": 3 * 1024 * 1024 for i in range(12)} | {"big.safetensors": 24 * 1024 * 1024}
    data = _folder(tmp_path / "src", sizes)
    digests = {n: hashlib.sha256(b).hexdigest() for n, b in data.items()}
    uri, prefix = f"s3://{bucket}/run/step", "run/step/"
    result, seen, violations, done = {}, set(), [], threading.Event()

    def upload():
        try:
            result["files"] = store.upload_dir(tmp_path / "src", uri)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    def watch():
        raw = s3_server.client()
        while not done.is_set():
            try:
                for obj in raw.list_objects(bucket, prefix=prefix, recursive=True):
                    name = obj.object_name[len(prefix):]
                    blob = raw.get_object(bucket, obj.object_name).read()
                    if name == MANIFEST:
                        for fname, entry in json.loads(blob)["files"].items():
                            got = raw.get_object(bucket, prefix + fname).read()
                            if hashlib.sha256(got).hexdigest() != entry["sha256"]:
                                violations.append(f"manifest lists {fname} but it is not complete")
                    elif hashlib.sha256(blob).hexdigest() != digests[name]:
                        violations.append(f"partial or wrong {name}: {len(blob)} bytes")
                    seen.add(name)
            except Exception:  # the server is down: a reader just gets errors
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    uploader = threading.Thread(target=upload)
    watcher.start()
    uploader.start()
    deadline = time.monotonic() + 30
    while len(store.list_files(uri)) < 3 and time.monotonic() < deadline and uploader.is_alive():
        time.sleep(0.02)
    s3_server.stop()
    stopped_mid_upload = uploader.is_alive()
    time.sleep(2.0)  # the uploader meets refused connections and backs off
    s3_server.start()
    uploader.join(60)
    deadline = time.monotonic() + 10
    while MANIFEST not in seen and time.monotonic() < deadline:  # the watcher's last pass sees the finished folder
        time.sleep(0.05)
    done.set()
    watcher.join(10)
    assert "error" not in result, result.get("error")
    assert stopped_mid_upload, "the upload finished before the server was stopped"
    assert not violations, violations
    assert MANIFEST in seen
    with store.local_input(uri) as inp:
        assert {n: hashlib.sha256((inp / n).read_bytes()).hexdigest() for n in data} == digests


def test_cli_put_then_get_a_folder(bucket, tmp_path):
    """`sicog store put|get`: how a base model reaches the store and how the chart's init container
    fetches a model for TGI; a tampered file is refused."""
    import subprocess
    import sys

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(4096))
    uri = f"s3://{bucket}/models/base"
    sicog = lambda *args: subprocess.run([sys.executable, "-m", "sicog.cli", "store", *args], capture_output=True, text=True, timeout=120)  # noqa: E731
    assert sicog("put", str(src), uri).returncode == 0
    got = sicog("get", uri, str(tmp_path / "fetched"))
    assert got.returncode == 0, got.stderr
    for name in ("config.json", "sub/weights.bin"):
        assert (tmp_path / "fetched" / name).read_bytes() == (src / name).read_bytes()
    store.write_bytes(f"{uri}/sub/weights.bin", b"tampered")
    refused = sicog("get", uri, str(tmp_path / "again"))
    assert refused.returncode == 2 and "sha256" in refused.stderr and "Traceback" not in refused.stderr
    assert sicog("get", f"s3://{bucket}/models/none", str(tmp_path / "none")).returncode == 2
