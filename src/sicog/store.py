"""Where step inputs and outputs live, addressed by URI: local paths / `file://` and `s3://bucket/key`.

Steps take URIs so the same code runs on a laptop and on a cluster. A step reads an input with
`local_input(uri)` (a local path; for S3 a downloaded, sha256-verified copy; `node_input` shares one
copy among a node's training ranks) and writes its output
folder with `local_output(uri)` (written in place locally; for S3 staged locally and published on a
clean exit). A published folder is its files plus `_manifest.json` (relative path -> sha256, size),
written LAST: the manifest is the commit marker, readers of S3 folders require it and verify every
file against it, so a reader never takes a half-written folder for a finished one.

Atomicity of single objects: locally a write goes to a temporary file in the same folder, then
`os.replace` publishes it. On S3 the temporary location is the upload itself: an object becomes
visible only when its PUT or its multipart upload completes (S3 semantics; minio aborts the
multipart upload on failure), so copying a temporary key to its final key would add a full server-side
copy and no safety.

S3 settings come from the environment (a Kubernetes Secret, the pod's cloud identity), never from configs:
  AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else SICOG_S3_ENDPOINT
                               http(s)://host:port (the scheme decides TLS) or host:port; default
                               s3.amazonaws.com (TLS). AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true skips the AWS_ ones
  SICOG_S3_SECURE              true/false: TLS when the endpoint has no scheme (default true)
  credentials                  AWS's standard chain, through minio's providers, first found wins:
                               1. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (a Secret: the MinIO default)
                               2. profile AWS_PROFILE (default "default") of AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials)
                               3. the platform's role: web identity / IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE,
                                  exchanged at AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL, else the region's AWS STS),
                                  else container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI / _RELATIVE_URI:
                                  EKS Pod Identity, ECS), else EC2 instance metadata (AWS_EC2_METADATA_SERVICE_ENDPOINT,
                                  AWS_EC2_METADATA_DISABLED)
  AWS_REGION (or AWS_DEFAULT_REGION)   optional
  SSL_CERT_FILE (or AWS_CA_BUNDLE)     CA bundle for a private TLS endpoint
  SICOG_S3_RETRY_SECONDS       how long one transfer retries connection errors and 5xx (default 300)
  SICOG_S3_PARALLEL            files transferred at once (default 8)
Errors name the endpoint, the bucket and the credential sources tried, never a credential.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar
from urllib.parse import urlparse

from sicog import retry
from sicog.errors import UserError

if TYPE_CHECKING:
    from minio.datatypes import Object

MANIFEST = "_manifest.json"
# The credentials a Kubernetes Secret gives every pod that reads or writes the store (same key and env names),
# when the cluster names one (cluster.s3_secret); without it pods take the credential chain's other sources.
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
PART_SIZE = 16 * 1024 * 1024  # multipart part size: fewer round trips than minio's 5 MiB minimum, bounded memory
CHUNK = 1024 * 1024
T = TypeVar("T")


class StoreError(UserError):
    """A URI this store cannot serve, or a store it cannot reach (reported as one line)."""


# --- URIs -----------------------------------------------------------------------------------------


def is_remote(uri: str | Path) -> bool:
    return urlparse(str(uri)).scheme == "s3"


def join(uri: str | Path, *parts: str) -> str:
    """`join("s3://b/run", "x/y.jsonl")` -> "s3://b/run/x/y.jsonl" (also for local paths and file://)."""
    text = str(uri)
    tail = "/".join(str(p).strip("/") for p in parts if str(p).strip("/"))
    if not tail:
        return text
    return f"{text.rstrip('/')}/{tail}" if text else tail


def local_path(uri: str | Path) -> Path:
    """The local filesystem path behind a local URI (S3 URIs: use local_input / local_output)."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme == "file" else text)
    if parsed.scheme == "s3":
        raise StoreError(f"store: {text} is in object storage; this needs a local path (read it through local_input)")
    raise StoreError(f"store: URI scheme {parsed.scheme}:// is not supported (use a local path, file:// or s3://)")


def _s3(uri: str | Path) -> tuple[str, str]:
    """(bucket, key without surrounding slashes) of an s3:// URI."""
    parsed = urlparse(str(uri))
    if not parsed.netloc:
        raise StoreError(f"store: {uri} names no bucket (use s3://bucket/key)")
    return parsed.netloc, parsed.path.strip("/")


def _under(key: str, name: str) -> str:
    return f"{key}/{name}" if key else name


# --- S3 settings and credentials ------------------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    secure: bool
    region: str | None
    retry_seconds: float
    parallel: int
    endpoint_from: str = "default"  # the variable that named the endpoint (for messages)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _configured_endpoint(env, service: str) -> tuple[str, str] | None:
    """(variable, URL) of AWS's configured endpoint for a service: AWS_ENDPOINT_URL_<SERVICE>, else
    AWS_ENDPOINT_URL; none while AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true (the SDKs' rules)."""
    if _flag(env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")):
        return None
    for name in (f"AWS_ENDPOINT_URL_{service}", "AWS_ENDPOINT_URL"):
        if env.get(name):
            return name, env[name]
    return None


def s3_settings() -> S3Settings:
    env = os.environ
    name, endpoint = _configured_endpoint(env, "S3") or ("SICOG_S3_ENDPOINT", env.get("SICOG_S3_ENDPOINT", ""))
    if not endpoint:
        name, endpoint = "default", "s3.amazonaws.com"
    secure = env.get("SICOG_S3_SECURE", "true").lower() not in ("0", "false", "no")
    if "://" in endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.strip("/") or parsed.query:
            raise StoreError(f"store: {name}={endpoint} is not host:port or http(s)://host:port")
        endpoint, secure = parsed.netloc, parsed.scheme == "https"
    try:
        retry_seconds, parallel = float(env.get("SICOG_S3_RETRY_SECONDS", 300)), int(env.get("SICOG_S3_PARALLEL", 8))
    except ValueError as exc:
        raise StoreError(f"store: SICOG_S3_RETRY_SECONDS / SICOG_S3_PARALLEL must be numbers ({exc})") from None
    return S3Settings(endpoint, secure, env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None, retry_seconds, max(1, parallel), name)


# Every variable the credential chain reads: a client (and its cached credentials) per combination.
CHAIN_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "HOME",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
)
IMDS = "http://169.254.169.254"


class _CredentialsUnreachable(StoreError):
    """The configured identity service (STS, the container credentials endpoint) did not answer:
    retried like a connection error, unlike missing or refused credentials."""


def _reason(exc: BaseException) -> str:
    """Why one provider failed, in a few words and never with a credential: minio's messages carry
    request URLs, whose query strings hold the web identity token, so those are cut."""
    import re

    import urllib3

    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason or exc
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        # urllib3's NewConnectionError (refused, no route) derives from its ConnectTimeoutError
        timed_out = isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)) and not isinstance(exc, urllib3.exceptions.NewConnectionError)
        return f"{'timed out' if timed_out else 'cannot connect'} ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot read {exc.filename} ({exc.strerror or type(exc).__name__})"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if status := re.search(r"failed with HTTP status code (\d+)", text):
        return f"HTTP {status.group(1)}"
    if missing := re.match(r"(access|secret) key does not exist in profile", text):  # minio's AWSConfigProvider
        return f"no such profile, or no aws_{missing.group(1)}_{'key_id' if missing.group(1) == 'access' else 'access_key'} in it"
    return re.sub(r"\?\S*", "?...", text)[:200]


def _unreachable(reason: str) -> bool:
    return reason.startswith(("timed out", "cannot connect", "HTTP 5"))


class _Link:
    """One source of the chain: its name (what a message shows) and minio's provider for it, or the
    reason it is not configured here."""

    def __init__(self, name: str, provider=None, absent: str = "", remote: bool = False):
        self.name, self.provider, self.absent, self.remote = name, provider, absent, remote
        self.failed = ""

    def adapter(self):
        from minio.credentials.providers import Provider

        link = self

        class Tried(Provider):
            """minio's ChainedProvider moves on only at a ValueError: any failure becomes one, with its reason kept."""

            def retrieve(self):
                try:
                    credentials = link.provider.retrieve()
                except Exception as exc:  # noqa: BLE001 - recorded, never re-raised with a credential in it
                    link.failed = _reason(exc)
                    raise ValueError(link.failed) from None
                link.failed = ""
                return credentials

        return Tried()

    def tried(self) -> str:
        return f"{self.name}: {self.absent or self.failed or 'not reached'}"


def _sts_endpoint(env, region: str | None) -> str:
    """Where web identity is exchanged: AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL, else AWS STS of the
    region (global without one, or with AWS_STS_REGIONAL_ENDPOINTS=legacy)."""
    configured = _configured_endpoint(env, "STS")
    if configured:
        return configured[1].rstrip("/")
    if not region or (env.get("AWS_STS_REGIONAL_ENDPOINTS") or "").lower() == "legacy":
        return "https://sts.amazonaws.com"
    return f"https://sts.{region}.amazonaws.com" + (".cn" if region.startswith("cn-") else "")


def _chain_links(env, region: str | None, ca_file: str | None) -> list[_Link]:
    """The standard AWS order: environment keys, the shared credentials file's profile, then the
    role the platform gives the process (minio's IamAwsProvider, which picks web identity / IRSA,
    else container credentials (ECS, EKS Pod Identity), else EC2 instance metadata)."""
    import certifi
    import urllib3
    from minio.credentials.providers import AWSConfigProvider, EnvAWSProvider, IamAwsProvider

    links = [
        _Link(
            "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
            EnvAWSProvider(),
            "" if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY") else "not set",
        )
    ]
    profile = env.get("AWS_PROFILE") or "default"
    filename = env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(env.get("HOME") or str(Path.home()), ".aws", "credentials")
    links.append(
        _Link(f"profile {profile} of {filename}", AWSConfigProvider(filename=filename, profile=profile), "" if os.path.isfile(filename) else "no such file")
    )

    # The role's source is the first of these the environment configures, as IamAwsProvider picks it.
    web_identity = env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    container = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    timeout = urllib3.Timeout(connect=5, read=30)
    retries = urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=False)
    if web_identity:
        custom = _sts_endpoint(env, region)
        name = f"web identity (AWS_WEB_IDENTITY_TOKEN_FILE, role {env.get('AWS_ROLE_ARN') or 'unset'}, STS {custom})"
        absent = "" if env.get("AWS_ROLE_ARN") else "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not"
    elif container:
        custom, name, absent = None, "container credentials (AWS_CONTAINER_CREDENTIALS_*: ECS, EKS Pod Identity)", ""
    else:
        custom = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or "").rstrip("/") or None
        name = f"instance metadata ({custom or IMDS})"
        absent = "disabled by AWS_EC2_METADATA_DISABLED" if _flag(env.get("AWS_EC2_METADATA_DISABLED")) else ""
        # Off EC2 nobody answers: fail within seconds, as the AWS SDKs do (1 s, one attempt).
        timeout, retries = urllib3.Timeout(connect=1, read=1), urllib3.Retry(total=0, raise_on_status=False)
    http = urllib3.PoolManager(timeout=timeout, retries=retries, cert_reqs="CERT_REQUIRED", ca_certs=ca_file or certifi.where())
    provider = IamAwsProvider(custom_endpoint=custom, http_client=http, region=region)
    links.append(_Link(name, provider, absent, remote=bool(web_identity or container)))
    return links


def _credential_chain(env, region: str | None, ca_file: str | None, endpoint: str):
    """minio's ChainedProvider over the links, serialized (one fetch when temporary credentials
    expire, not one per transfer thread); nothing found is one StoreError naming every source tried."""
    import threading

    from minio.credentials.providers import ChainedProvider, Provider

    links = _chain_links(env, region, ca_file)
    chain = ChainedProvider([link.adapter() for link in links if not link.absent])
    lock = threading.Lock()

    class Chain(Provider):
        source = ""

        def retrieve(self):
            with lock:
                try:
                    credentials = chain.retrieve()
                except ValueError:
                    tried = "; ".join(link.tried() for link in links)
                    if any(link.remote and link.failed and _unreachable(link.failed) for link in links):
                        raise _CredentialsUnreachable(f"store: no S3 credentials for {endpoint} yet: tried {tried}") from None
                    raise StoreError(f"store: no S3 credentials for {endpoint}: tried {tried}") from None
                Chain.source = next((link.name for link in links if not link.absent and not link.failed), "")
                return credentials

    return Chain()


def _client():
    env = os.environ
    s = s3_settings()
    return _make_client(s.endpoint, s.secure, s.region, env.get("SSL_CERT_FILE") or env.get("AWS_CA_BUNDLE"), s.parallel, tuple(env.get(k) for k in CHAIN_ENV))


@lru_cache(maxsize=4)
def _make_client(endpoint, secure, region, ca_file, parallel, chain_env):
    """One client (and connection pool, and credential chain) per settings; thread-safe, shared by
    the transfer threads. chain_env: the values of CHAIN_ENV, the key of the cached credentials."""
    import certifi
    import urllib3
    from minio import Minio

    # Quick retries of blips inside one request; long outages are retried per transfer by _retrying.
    retry = urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=False)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300),
        maxsize=max(10, 2 * parallel),
        retries=retry,
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_file or certifi.where(),
    )
    return Minio(endpoint, credentials=_credentials(endpoint, region, ca_file, chain_env), secure=secure, region=region, http_client=http)


@lru_cache(maxsize=8)
def _credentials(endpoint, region, ca_file, chain_env):
    return _credential_chain(dict(zip(CHAIN_ENV, chain_env)), region, ca_file, endpoint)


def credential_source() -> str:
    """Where the credentials the store signs with came from (once a request has fetched them): a
    source's name as errors show it, e.g. "web identity (...)"; empty before."""
    env, s = os.environ, s3_settings()
    return _credentials(s.endpoint, s.region, env.get("SSL_CERT_FILE") or env.get("AWS_CA_BUNDLE"), tuple(env.get(k) for k in CHAIN_ENV)).source


# --- S3 errors and retries -----------------------------------------------------------------------


RETRY_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "NoSuchUpload"}
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


def _retryable(exc: Exception) -> bool:
    """Connection errors and 5xx. NoSuchUpload too: a multipart upload the server lost (e.g. restart) is redone whole."""
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, _CredentialsUnreachable)):
        return True
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        return exc.args and "Response code: 5" in str(exc.args[0])
    if isinstance(exc, S3Error):
        return exc.code in RETRY_CODES or (exc.response is not None and exc.response.status >= 500)
    return False


def _explain(exc: Exception, uri: str) -> Exception:
    """The one-line error a user sees for a failed S3 call (never a credential)."""
    from minio.error import S3Error

    if isinstance(exc, StoreError):  # the credential chain's own one-line error
        return exc
    endpoint = s3_settings().endpoint
    bucket = _s3(uri)[0]
    if isinstance(exc, S3Error):
        if exc.code in DENIED_CODES:
            source = credential_source() or "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            return StoreError(f"store: access denied to s3://{bucket} at {endpoint}: check the credentials (from {source})")
        if exc.code == "NoSuchBucket":
            return StoreError(f"store: no bucket {bucket} at {endpoint}")
        if exc.code == "NoSuchKey":
            return FileNotFoundError(2, "no such object", str(uri))
        return StoreError(f"store: {uri} at {endpoint}: {exc.code}: {exc.message}")
    return StoreError(f"store: {uri} at {endpoint}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _retrying(uri: str, fn: Callable[[], T]) -> T:
    """Run one S3 operation under the project's retry policy (sicog.retry): connection errors and 5xx
    are retried with exponential backoff and jitter for SICOG_S3_RETRY_SECONDS; anything else (or a
    spent budget) becomes one clear error."""
    budget = s3_settings().retry_seconds
    try:
        return retry.call(fn, _retryable, budget_s=budget, first_s=0.25, max_s=8.0, what=f"store: {uri}", describe=lambda exc: str(_explain(exc, uri)))
    except _CredentialsUnreachable as exc:
        raise StoreError(f"{exc} (gave up after retrying for {budget:g}s)") from None
    except (StoreError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear error, never a credential
        if _retryable(exc):  # still failing when the budget ran out
            raise StoreError(f"{_explain(exc, uri)} (gave up after retrying for {budget:g}s)") from None
        raise _explain(exc, uri) from None


def check_access(uri: str | Path) -> None:
    """Fail early, before a step does any work, when the bucket is missing or the credentials are wrong."""
    if not is_remote(uri):
        return
    bucket, _ = _s3(uri)
    if not _retrying(str(uri), lambda: _client().bucket_exists(bucket)):
        raise StoreError(f"store: no bucket {bucket} at {s3_settings().endpoint}")


def _stat(uri: str, bucket: str, key: str):
    """The object's stat, or None when there is none."""
    from minio.error import S3Error

    def stat():
        try:
            return _client().stat_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise

    return _retrying(uri, stat)


# --- single objects -------------------------------------------------------------------------------


def list_folders(prefix_uri: str | Path) -> list[str]:
    """The names of the folders right under the prefix (not their contents), sorted; [] when none."""
    if not is_remote(prefix_uri):
        root = local_path(prefix_uri)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    bucket, key = _s3(prefix_uri)
    prefix = f"{key}/" if key else ""
    names = _retrying(str(prefix_uri), lambda: [o.object_name for o in _client().list_objects(bucket, prefix=prefix, recursive=False) if o.is_dir])
    return sorted(name[len(prefix) :].rstrip("/") for name in names)


def exists(uri: str | Path) -> bool:
    """A file (object), or a folder (locally: any folder; on S3: a published one, with its manifest)."""
    if not is_remote(uri):
        return local_path(uri).exists()
    bucket, key = _s3(uri)
    return _stat(str(uri), bucket, key) is not None or _stat(str(uri), bucket, _under(key, MANIFEST)) is not None


def read_bytes(uri: str | Path) -> bytes:
    if not is_remote(uri):
        return local_path(uri).read_bytes()
    bucket, key = _s3(uri)

    def get():
        response = _client().get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    return _retrying(str(uri), get)


def read_text(uri: str | Path) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Atomic: a reader sees the old content or all of the new, never part of it."""
    if not is_remote(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    bucket, key = _s3(uri)
    _retrying(str(uri), lambda: _client().put_object(bucket, key, io.BytesIO(data), len(data)))


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(prefix_uri: str | Path) -> list[str]:
    """Every file under the prefix (recursive), relative to it, sorted; [] when there is none."""
    if not is_remote(prefix_uri):
        root = local_path(prefix_uri)
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    bucket, key = _s3(prefix_uri)
    prefix = f"{key}/" if key else ""
    names = _retrying(str(prefix_uri), lambda: [o.object_name for o in _client().list_objects(bucket, prefix=prefix, recursive=True)])
    return sorted(name[len(prefix) :] for name in names)


def delete(uri: str | Path) -> None:
    """Remove the file (object) at `uri` and everything under it; nothing there is fine."""
    if not is_remote(uri):
        path = local_path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    from minio.deleteobjects import DeleteObject

    bucket, key = _s3(uri)
    keys = ([key] if key else []) + [_under(key, name) for name in list_files(uri)]

    def remove():
        errors = list(_client().remove_objects(bucket, [DeleteObject(k) for k in keys]))
        if errors:
            raise StoreError(f"store: could not delete {len(errors)} object(s) under {uri}: {errors[0].code}")

    if keys:
        _retrying(str(uri), remove)


# --- folders: manifests, parallel transfers --------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_files(root: Path) -> list[str]:
    """Every file under `root` but its own manifest. The manifests of sealed sub-folders (a run folder's
    step outputs) are ordinary files here, so they travel with the folder and keep those folders readable."""
    return sorted(name for p in root.rglob("*") if p.is_file() and (name := p.relative_to(root).as_posix()) != MANIFEST)


def _manifest_bytes(files: dict[str, dict]) -> bytes:
    return json.dumps({"files": files}, indent=1, sort_keys=True).encode()


def _parallel(fn: Callable[[str], T], names: list[str]) -> list[T]:
    workers = min(s3_settings().parallel, len(names))
    if workers <= 1:
        return [fn(n) for n in names]
    with ThreadPoolExecutor(workers, thread_name_prefix="sicog-store") as pool:
        return list(pool.map(fn, names))


def upload_dir(local_dir: str | Path, uri: str | Path) -> dict[str, dict]:
    """Publish a local folder at `uri`: every file (in parallel, multipart when large), then the
    manifest last. The previous manifest is removed first, so while files are replaced the folder
    reads as unpublished rather than as a mix of old and new. Returns the manifest's files."""
    root, uri = Path(local_dir), str(uri)
    names = _folder_files(root)
    if not is_remote(uri):
        raise StoreError(f"store: upload_dir needs an s3:// URI, not {uri}")
    check_access(uri)
    bucket, key = _s3(uri)
    _retrying(uri, lambda: _client().remove_object(bucket, _under(key, MANIFEST)))

    def put(name: str) -> dict:
        path = root / name
        entry = {"sha256": _sha256(path), "size": path.stat().st_size}
        _retrying(join(uri, name), lambda: _client().fput_object(bucket, _under(key, name), str(path), part_size=PART_SIZE, num_parallel_uploads=1))
        return entry

    seals = [n for n in names if n.rsplit("/", 1)[-1] == MANIFEST]  # a sub-folder is sealed after its files
    content = sorted(set(names) - set(seals))
    files = dict(zip(content, _parallel(put, content))) | dict(zip(seals, _parallel(put, seals)))
    write_bytes(join(uri, MANIFEST), _manifest_bytes(files))
    return files


def _download(uri: str, bucket: str, key: str, dest: Path, sha256: str | None) -> None:
    """Stream one object to `dest` (via a temporary file), hashing as it goes; verify against the manifest."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def get():
        digest = hashlib.sha256()
        tmp = dest.with_name(f".{dest.name}.part")
        response = _client().get_object(bucket, key)
        try:
            with open(tmp, "wb") as f:
                for chunk in response.stream(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
        finally:
            response.close()
            response.release_conn()
        if sha256 is not None and digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"store: {uri} does not match its manifest's sha256 (changed while being read, or corrupt)")
        os.replace(tmp, dest)

    _retrying(uri, get)


def read_manifest(uri: str | Path) -> dict[str, dict]:
    """The files of a published folder: {relative path: {sha256, size}}."""
    try:
        return json.loads(read_bytes(join(uri, MANIFEST)))["files"]
    except FileNotFoundError:
        raise StoreError(f"store: {uri} is not a published folder (no {MANIFEST}: its writer has not finished)") from None


def download_dir(uri: str | Path, local_dir: str | Path) -> dict[str, dict]:
    """Fetch a published folder (in parallel, each file verified against the manifest)."""
    uri, root = str(uri), Path(local_dir)
    bucket, key = _s3(uri)
    files = read_manifest(uri)
    _parallel(lambda name: _download(join(uri, name), bucket, _under(key, name), root / name, files[name]["sha256"]), sorted(files))
    (root / MANIFEST).write_bytes(_manifest_bytes(files))
    return files


def write_manifest(local_dir: str | Path) -> dict[str, dict]:
    """Seal a local output folder: the manifest of its files, written last and atomically."""
    root = Path(local_dir)
    files = {name: {"sha256": _sha256(root / name), "size": (root / name).stat().st_size} for name in _folder_files(root)}
    write_bytes(root / MANIFEST, _manifest_bytes(files))
    return files


def _published(uri: str) -> tuple[bool, Object]:
    """Whether `uri` is a published folder (True: the stat of its manifest) or a single object (False: its stat)."""
    bucket, key = _s3(uri)
    if (info := _stat(uri, bucket, _under(key, MANIFEST))) is not None:
        return True, info
    if key and (info := _stat(uri, bucket, key)) is not None:
        return False, info
    raise FileNotFoundError(2, "no such object or published folder", uri)


def _fetch(uri: str, into: Path, folder: bool) -> Path:
    """Download `uri` (a published folder, or a single object: _published) under the empty folder `into`; its local path."""
    if folder:
        download_dir(uri, into / "folder")
        return into / "folder"
    bucket, key = _s3(uri)
    dest = into / key.rsplit("/", 1)[-1]
    _download(uri, bucket, key, dest, None)
    return dest


def _existing(uri: str | Path) -> Path:
    path = local_path(uri)
    if not path.exists():
        raise FileNotFoundError(2, "no such file or folder", str(uri))
    return path


@contextmanager
def local_input(uri: str | Path) -> Iterator[Path]:
    """A local file or folder with `uri`'s content: the path itself locally; on S3 a verified
    download (a published folder, or a single object) removed on exit."""
    if not is_remote(uri):
        yield _existing(uri)
        return
    tmp = Path(tempfile.mkdtemp(prefix="sicog-in-"))
    try:
        yield _fetch(str(uri), tmp, _published(str(uri))[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def node_input(uri: str | Path) -> Iterator[Path]:
    """local_input for the ranks of one machine (under torchrun: LOCAL_RANK is set) that read the same
    inputs: the first one to ask downloads `uri` into a folder named from the URI and its version
    (the manifest's or the object's ETag), the others wait on a file lock and read that copy. A 7B
    model or a 665k-record annotation file is fetched once per node, not eight times. Outside torchrun
    it is local_input.

    The copy is kept on exit: the node's other ranks may still be reading it, and a pod's temporary
    folder goes with the pod (a container restarted in the same pod finds it complete and fetches
    nothing). A copy interrupted mid-download has no completion mark and is fetched again; a
    republished `uri` has another version, so a stale copy is never read."""
    if not is_remote(uri) or "LOCAL_RANK" not in os.environ:
        with local_input(uri) as path:
            yield path
        return
    import fcntl

    is_folder, info = _published(str(uri))
    version = hashlib.sha256(f"{uri} {info.etag}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"sicog-node-{version}"
    done = folder.with_name(folder.name + ".done")  # holds the fetched path's name under `folder`
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            name = _fetch(str(uri), folder, is_folder).name
            done.write_text(name)
    yield folder / done.read_text()


@contextmanager
def local_output(uri: str | Path) -> Iterator[Path]:
    """A local folder to write a step's output into; on a clean exit it is sealed with a manifest
    (locally, written in place) or published to S3 (staged in a temporary folder, then uploaded).
    S3 access is checked on entry, so wrong credentials fail before the step does any work."""
    if not is_remote(uri):
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST).unlink(missing_ok=True)  # unsealed while being rewritten
        yield path
        write_manifest(path)
        return
    check_access(uri)
    tmp = Path(tempfile.mkdtemp(prefix="sicog-out-"))
    try:
        yield tmp
        upload_dir(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
