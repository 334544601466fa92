"""sicog.store against the local filesystem and a real S3 API server on loopback (moto): atomic,
verified, resumable transfers; a server that crashes mid-upload; one clear error for wrong credentials."""

import hashlib
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

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


def _node_rank(uri: str, fetch_log: str, out: str) -> None:
    """One training rank of a node (a forked process): reads `uri` through node_input, logs each fetch."""
    store._make_client.cache_clear()  # no connection shared with the parent or a sibling
    fetch = store._fetch

    def logged(uri, into, folder):
        with open(fetch_log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # the others ask while the fetch is under way
        return fetch(uri, into, folder)

    store._fetch = logged
    with store.node_input(uri) as path:
        digest = hashlib.sha256(b"".join((path / n).read_bytes() for n in ("model.safetensors", "tok/vocab.json"))).hexdigest()
        Path(out).write_text(f"{path}\n{digest}")


def test_node_input_fetches_once_per_node_for_all_its_ranks(bucket, tmp_path, monkeypatch):
    """Four ranks of one node ask for the same model at once: one download, one copy, all read it whole;
    a copy left half-done (no completion mark) by a killed rank is fetched again, not used."""
    import multiprocessing
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))  # the pod's temporary folder
    monkeypatch.setenv("LOCAL_RANK", "0")  # under torchrun (each rank has its own; the value does not matter)
    (tmp_path / "node-tmp").mkdir()
    data = _folder(tmp_path / "src", {"model.safetensors": 2 * 1024 * 1024, "tok/vocab.json": 1000})
    uri = f"s3://{bucket}/run/model"
    store.upload_dir(tmp_path / "src", uri)
    want = hashlib.sha256(data["model.safetensors"] + data["tok/vocab.json"]).hexdigest()

    def ranks(n: int, log: str) -> list[list[str]]:
        context = multiprocessing.get_context("fork")
        procs = [context.Process(target=_node_rank, args=(uri, str(tmp_path / log), str(tmp_path / f"{log}-{i}"))) for i in range(n)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        return [(tmp_path / f"{log}-{i}").read_text().splitlines() for i in range(n)]

    seen = ranks(4, "first")
    assert len((tmp_path / "first").read_text().split()) == 1  # one fetch for four ranks
    assert {path for path, _ in seen} == {seen[0][0]} and all(digest == want for _, digest in seen)
    copy = Path(seen[0][0])
    assert copy.is_dir() and copy.parent.parent == tmp_path / "node-tmp"
    monkeypatch.delenv("LOCAL_RANK")  # not a rank: a private copy, removed on exit
    with store.node_input(uri) as private:
        assert private.parent.parent != copy.parent and (private / "tok/vocab.json").read_bytes() == data["tok/vocab.json"]
    assert not private.exists()
    monkeypatch.setenv("LOCAL_RANK", "0")

    (copy / "model.safetensors").write_bytes(b"half")  # a rank killed mid-fetch: no completion mark
    next(copy.parent.parent.glob("sicog-node-*.done")).unlink()
    seen = ranks(2, "again")
    assert len((tmp_path / "again").read_text().split()) == 1 and all(digest == want for _, digest in seen)

    data = _folder(tmp_path / "src", {"model.safetensors": 1000, "tok/vocab.json": 10})  # republished: a new version
    store.upload_dir(tmp_path / "src", uri)
    seen = ranks(2, "republished")
    assert len((tmp_path / "republished").read_text().split()) == 1
    assert all(digest == hashlib.sha256(data["model.safetensors"] + data["tok/vocab.json"]).hexdigest() for _, digest in seen)


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
                    name = obj.object_name[len(prefix) :]
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


# --- credentials: AWS's standard chain (sicog.store._chain_links) -----------------------------------

ROLE = "arn:aws:iam::111122223333:role/sicog-pipeline"


def _without_static_keys(monkeypatch, tmp_path):
    """What a pod whose service account carries a role gets: no Secret keys, no ~/.aws."""
    for key in store.SECRET_ENV:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))


def _roundtrip(bucket: str, name: str) -> None:
    uri = f"s3://{bucket}/creds/{name}.txt"
    store.write_text(uri, name)
    assert store.read_text(uri) == name and store.list_files(f"s3://{bucket}/creds") == [f"{name}.txt"]


def test_web_identity_token_file_exchanged_at_sts(bucket, s3_server, tmp_path, monkeypatch):
    """IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, exchanged (AssumeRoleWithWebIdentity) at the
    test server's STS, named by AWS_ENDPOINT_URL_STS, the store named by AWS_ENDPOINT_URL_S3 alone;
    every S3 request is signed with the temporary credentials STS issued, fetched once."""
    from moto.sts.models import sts_backends

    _without_static_keys(monkeypatch, tmp_path)
    monkeypatch.delenv("SICOG_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2ljb2c6c2ljb2ctcGlwZWxpbmUifQ.c2lnbmF0dXJl")
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "sicog-test")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", s3_server.endpoint)
    s3_server.sts_calls.clear()
    s3_server.signed_by.clear()
    _roundtrip(bucket, "irsa")
    assert [(c["Action"], c["RoleArn"], c["RoleSessionName"], c["WebIdentityToken"]) for c in s3_server.sts_calls] == [
        ("AssumeRoleWithWebIdentity", ROLE, "sicog-test", token.read_text())
    ]
    issued = next(r for r in sts_backends["111122223333"]["aws"].assumed_roles if r.session_name == "sicog-test")
    assert issued.access_key_id.startswith("ASIA")
    assert set(s3_server.signed_by) == {(issued.access_key_id, issued.session_token)}
    assert store.credential_source().startswith(f"web identity (AWS_WEB_IDENTITY_TOKEN_FILE, role {ROLE}, STS {s3_server.endpoint})")


def test_endpoint_from_aws_endpoint_url_s3(bucket, s3_server, monkeypatch):
    """AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else SICOG_S3_ENDPOINT; the scheme decides TLS."""
    monkeypatch.delenv("SICOG_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://elsewhere.example:9000")  # the service-specific one wins
    s3_server.signed_by.clear()
    _roundtrip(bucket, "endpoint")
    assert {key for key, _ in s3_server.signed_by} == {"sicog-test"}
    settings = store.s3_settings()
    assert (settings.endpoint, settings.secure, settings.endpoint_from) == (s3_server.endpoint.removeprefix("http://"), False, "AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("SICOG_S3_ENDPOINT", "minio.local:9000")
    assert (store.s3_settings().endpoint, store.s3_settings().secure) == ("elsewhere.example:9000", True)
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert store.s3_settings().endpoint_from == "SICOG_S3_ENDPOINT"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "false")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://host:9000/some/path")
    with pytest.raises(StoreError, match=r"AWS_ENDPOINT_URL=http://host:9000/some/path is not host:port"):
        store.s3_settings()
    # Web identity's STS: AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL, else the region's AWS STS.
    assert store._sts_endpoint({"AWS_ENDPOINT_URL": "http://minio:9000/"}, "eu-west-1") == "http://minio:9000"
    assert store._sts_endpoint({"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ENDPOINT_URL_STS": "https://sts.internal"}, None) == "https://sts.internal"
    assert store._sts_endpoint({}, "eu-west-1") == "https://sts.eu-west-1.amazonaws.com"
    assert store._sts_endpoint({}, "cn-north-1") == "https://sts.cn-north-1.amazonaws.com.cn"
    assert store._sts_endpoint({"AWS_STS_REGIONAL_ENDPOINTS": "legacy"}, "eu-west-1") == store._sts_endpoint({}, None) == "https://sts.amazonaws.com"


def test_profile_of_the_shared_credentials_file(bucket, s3_server, tmp_path, monkeypatch):
    _without_static_keys(monkeypatch, tmp_path)
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = AKIADEFAULTPROFILE\naws_secret_access_key = default-secret\n\n"
        "[sicog-ci]\naws_access_key_id = ASIACIPROFILE\naws_secret_access_key = ci-secret\naws_session_token = ci-token\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "sicog-ci")
    s3_server.signed_by.clear()
    _roundtrip(bucket, "profile")
    assert set(s3_server.signed_by) == {("ASIACIPROFILE", "ci-token")}
    assert store.credential_source() == f"profile sicog-ci of {credentials}"
    monkeypatch.delenv("AWS_PROFILE")
    s3_server.signed_by.clear()
    store.write_text(f"s3://{bucket}/creds/default.txt", "d")
    assert set(s3_server.signed_by) == {("AKIADEFAULTPROFILE", None)}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "sicog-test")  # environment keys come first
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sicog-test-secret")
    s3_server.signed_by.clear()
    store.write_text(f"s3://{bucket}/creds/env.txt", "e")
    assert set(s3_server.signed_by) == {("sicog-test", None)}


@pytest.mark.parametrize("source", ["instance metadata", "EKS Pod Identity"])
def test_platform_role_from_instance_metadata_or_pod_identity(bucket, s3_server, tmp_path, monkeypatch, source):
    """The last sources, served here by moto's instance metadata (the Pod Identity agent answers the
    same JSON at AWS_CONTAINER_CREDENTIALS_FULL_URI, authorized by the token file's content)."""
    _without_static_keys(monkeypatch, tmp_path)
    if source == "instance metadata":
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", s3_server.endpoint + "/")
    else:
        (tmp_path / "eks-pod-identity-token").write_text("pod-identity-token")
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{s3_server.endpoint}/latest/meta-data/iam/security-credentials/default-role")
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(tmp_path / "eks-pod-identity-token"))
    s3_server.signed_by.clear()
    _roundtrip(bucket, source.replace(" ", "-"))
    assert set(s3_server.signed_by) == {("test-key", "test-session-token")}  # moto's instance role
    assert store.credential_source().startswith("instance metadata" if source == "instance metadata" else "container credentials")


def test_no_credentials_is_one_line_naming_every_source(bucket, tmp_path, monkeypatch):
    _without_static_keys(monkeypatch, tmp_path)
    with socket.socket() as s:  # a port nobody listens on: no instance metadata here
        s.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", nobody)
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.write_text(f"s3://{bucket}/x.txt", "x")
    message = str(info.value)
    assert time.monotonic() - start < 5  # not retried: nothing will appear
    assert "\n" not in message and message.startswith(f"store: no S3 credentials for {store.s3_settings().endpoint}: tried ")
    for tried in (
        "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): not set",
        f"profile default of {tmp_path}/.aws/credentials: no such file",
        f"instance metadata ({nobody}): cannot connect",
    ):
        assert tried in message, message
    # Half the keys: named, the key itself never shown.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASHOWNNOWHERE")
    with pytest.raises(StoreError, match="environment.*: Secret key must not be empty") as info:
        store.check_access(f"s3://{bucket}/run")
    assert "AKIASHOWNNOWHERE" not in str(info.value)


def test_web_identity_errors_never_show_the_token(bucket, tmp_path, monkeypatch):
    _without_static_keys(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "missing-token"))
    with pytest.raises(StoreError, match=f"web identity .*: error in reading file {tmp_path}/missing-token"):
        store.write_text(f"s3://{bucket}/x.txt", "x")
    (tmp_path / "token").write_text("secret-jwt-never-shown")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.setenv("SICOG_S3_RETRY_SECONDS", "0.5")  # an STS that does not answer is retried like a connection error
    with pytest.raises(StoreError) as info:
        store.write_text(f"s3://{bucket}/x.txt", "x")
    message = str(info.value)
    assert "\n" not in message and "cannot connect" in message and "gave up after retrying for 0.5s" in message
    assert "secret-jwt-never-shown" not in message


def test_cluster_pods_without_an_s3_secret_run_as_the_service_account():
    """cluster.s3_secret empty (the default): no Secret env on the sampler server and training pods,
    which run as cluster.service_account (whose role the chain finds); with a Secret, its keys and the
    namespace's default account. The pipeline's own task pods run as service_account already."""
    from sicog.cluster.pytorchjob import build_pytorchjob
    from sicog.cluster.serving import server_manifests
    from sicog.cluster.trainjob import build_trainjob
    from sicog.config import SicogConfig

    stage = dict(stage="pretrain", name="cycle/pretrain", out="s3://sicog/runs/1/pretrain", request_uri="s3://sicog/runs/1/pretrain/request.json")
    for secret, account in (("", "sicog-pipeline"), ("sicog-s3", None)):
        cfg = SicogConfig.model_validate(
            {"sample": {"engine": "vllm"}, "cluster": {"s3_secret": secret, "s3_endpoint": "http://minio.minio.svc:9000", "service_account": "sicog-pipeline"}}
        )
        pod = server_manifests(cfg, run_id="run-1", role="backbone", model_uri="s3://sicog/models/base", namespace="sicog")[0]["spec"]["template"]["spec"]
        master = build_pytorchjob(cfg, **stage).spec.pytorch_replica_specs["Master"].template.spec
        (patch,) = build_trainjob(cfg, **stage)["spec"]["runtimePatches"]
        node = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
        assert (pod.get("serviceAccountName"), master.service_account_name, node.get("serviceAccountName")) == (account, account, account)
        env = {e["name"]: e for e in pod["initContainers"][0]["env"]}
        assert env["SICOG_S3_ENDPOINT"]["value"] == "http://minio.minio.svc:9000"
        assert {k for k, e in env.items() if "valueFrom" in e} == (set() if not secret else set(store.SECRET_ENV))
        assert {e.name for e in master.containers[0].env if e.value_from} == (set() if not secret else set(store.SECRET_ENV))
