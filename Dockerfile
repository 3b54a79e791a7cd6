# syntax=docker/dockerfile:1
# stemworker: the DEMUCS separation worker. Build it with scripts/build-image.sh (Docker, Podman or Buildah);
# docs/image.md explains every argument below.
#
# Works on any Debian-like base with Python 3.11 and the venv module: the official python image
# (python in /usr/local/bin) or a Debian bookworm rootfs with python3 + python3-venv (python in /usr/bin).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Optional build contexts, empty unless the build names them with --build-context NAME=DIR:
# - model-source: a local DEMUCS model repo to bake instead of downloading (offline builds);
# - pip-find-links: a folder of wheels, named as find-links by the pip.conf secret.
FROM scratch AS model-source
FROM scratch AS pip-find-links

# ---------------------------------------------------------------- build: wheel, venv, model repo
FROM ${BASE_IMAGE} AS build
# CPU torch by default, pinned exactly as CI installs it (.ci/run: pip install torch==2.13.0).
# A CUDA variant: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128. An empty TORCH_INDEX
# uses pip's configured index (and find-links), as CI does.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# pip's own configuration (index, CA certificate, constraints) arrives as build secrets and local wheels as a
# bind mount: none of it is written to a layer. Without them pip uses its defaults.
RUN --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-ca.crt \
    --mount=type=secret,id=pip-constraints.txt \
    --mount=type=bind,from=pip-find-links,target=/run/pip-find-links \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"

# diffq (it loads the DiffQ-quantized models mdx_q and mdx_extra_q) is published as a source distribution only:
# pip compiles its Cython extension, which needs a C compiler and the Python headers (python:3.11-slim ships the
# headers, a Debian python3 needs python3-dev). They stay in this stage: the runtime stage copies only the venv.
# An offline build can pass --build-arg BUILD_DEPS= and a prebuilt diffq wheel through pip-find-links.
ARG BUILD_DEPS="gcc libc6-dev"
RUN if [ -n "$BUILD_DEPS" ]; then \
        headers=$(python3 -c 'import os, sysconfig; print(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'); \
        apt-get update \
        && apt-get install -y --no-install-recommends $BUILD_DEPS $([ "$headers" = True ] || echo python3-dev) \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /src
# Every runtime dependency (no extras) at the version and hashes of requirements.lock (scripts/lock.sh writes it
# from pyproject.toml; torch is not in it: it is installed above). No resolution happens here, so every build gets
# the same packages; this layer is reused until the lock changes.
COPY requirements.lock ./
RUN --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-ca.crt \
    --mount=type=secret,id=pip-constraints.txt \
    --mount=type=bind,from=pip-find-links,target=/run/pip-find-links \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    pip install --no-deps --require-hashes -r requirements.lock

COPY pyproject.toml README.md* ./
COPY function ./function
COPY stemops ./stemops
# The project itself, without resolving anything; pip check then proves the lock and torch satisfy every
# requirement of pyproject.toml.
RUN --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=pip-ca.crt \
    --mount=type=secret,id=pip-constraints.txt \
    --mount=type=bind,from=pip-find-links,target=/run/pip-find-links \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    pip wheel --no-deps --wheel-dir /tmp/dist . \
    && pip install --no-deps /tmp/dist/stemworker-*.whl \
    && pip check \
    && rm -rf /tmp/dist

# Model weights, loaded with demucs' own loader (from model-source, else downloaded) and written as a local
# model repo; download caches stay in this stage. MODELS is comma-separated; DEMUCS_MODEL is the default, which is
# also frozen (function/frozen_models.py): a pod maps it in at start instead of rebuilding it from its weights.
ARG MODELS=htdemucs
ARG DEMUCS_MODEL=htdemucs
COPY scripts/bake_models.py /src/scripts/bake_models.py
RUN --mount=type=bind,from=model-source,target=/run/model-source \
    HF_HOME=/tmp/model-cache/hf TORCH_HOME=/tmp/model-cache/torch \
    python /src/scripts/bake_models.py --dest /opt/stemworker/models --models "$MODELS" \
        --default "$DEMUCS_MODEL" --source /run/model-source \
    && rm -rf /tmp/model-cache \
    && python -m function.frozen_models --repo /opt/stemworker/models --models "$DEMUCS_MODEL" \
    && package=$(python -I -c 'import importlib.util as u; print(u.find_spec("function").submodule_search_locations[0])') \
    && ln -s "$package/main.py" /opt/stemworker/main.py

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
# A fixed numeric user (the KEDA manifest's runAsUser) so runAsNonRoot can check it.
RUN groupadd --gid 10001 stemworker \
    && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin stemworker \
    && chmod 1777 /tmp

# Root-owned and read-only for the worker: code, dependencies and weights never change at run time.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/stemworker /opt/stemworker

# The only place the worker writes is TMPDIR (an emptyDir in Kubernetes, with a read-only root fs); HOME
# points there too so that no library looks for a writable home elsewhere. Weights are local: no hub calls.
ARG MODELS=htdemucs
ARG DEMUCS_MODEL=htdemucs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp \
    HOME=/tmp \
    DEMUCS_REPO=/opt/stemworker/models \
    DEMUCS_MODEL=${DEMUCS_MODEL} \
    DEMUCS_MODELS=${MODELS} \
    HF_HUB_OFFLINE=1 \
    FUNCTION_TARGET=handle \
    FUNCTION_SOURCE=/opt/stemworker/main.py

# scripts/build-image.sh fills these from pyproject.toml and git.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="stemworker" \
      org.opencontainers.image.description="Splits songs into bass, drums, vocals and other stems with DEMUCS; jobs from Redis, audio in S3" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.stemworker.models="${MODELS}"

WORKDIR /opt/stemworker
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "function.runner"]

# ---------------------------------------------------------------- http (build with --target http)
# The HTTP alternative for Knative (`func deploy --build=false`): the same image serving CloudEvents over HTTP
# with functions-framework (FUNCTION_TARGET/FUNCTION_SOURCE above; it listens on $PORT, 8080 by default).
FROM runtime AS http
ENTRYPOINT ["functions-framework"]

# ---------------------------------------------------------------- job (the default target: the last stage)
FROM runtime AS job
ENTRYPOINT ["python", "-m", "function.runner"]
