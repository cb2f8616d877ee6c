# syntax=docker/dockerfile:1.7
# Two images from one repository:
#   docker build --target operator -t finetune-operator .   (slim: the API + kopf, never torch)
#   docker build --target trainer  -t finetune-trainer .    (CUDA, torch, flash-attn, DeepSpeed, bitsandbytes)
# CI has no container engine: tests/unit/test_dockerfile_install.py runs the operator target's
# COPY and `pip install` steps in a virtual environment, so keep them plain (one pip command per RUN).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

# ---------------------------------------------------------------- operator
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="finetune-operator" \
      org.opencontainers.image.description="Kubernetes operator that fine-tunes LLMs (kopf)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY crds ./crds
COPY operator ./operator
COPY trainer_image ./trainer_image
# The project's own dependencies are pinned in pyproject.toml (hadolint sees an unpinned ".").
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[operator]"
RUN groupadd --gid 10001 finetune \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin finetune
USER 10001:10001
# Prometheus metrics on 8080 (FINETUNE_METRICS_PORT), kopf's liveness endpoint on 8081
# (FINETUNE_LIVENESS_ENDPOINT). The chart sets both; every other setting is a FINETUNE_* variable.
EXPOSE 8080 8081
# `python -m finetune_operator` reads the settings (watched namespaces, peering, liveness) from the
# environment; a bare `kopf run` would ignore them.
ENTRYPOINT ["python", "-m", "finetune_operator"]

# ---------------------------------------------------------------- trainer
FROM ${CUDA_IMAGE} AS trainer
LABEL org.opencontainers.image.title="finetune-trainer" \
      org.opencontainers.image.description="LLM fine-tuning trainer run by finetune-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    HF_HOME=/tmp/hf FINETUNE_CACHE_DIR=/tmp/finetune-cache
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu 24.04 ships Python 3.12 (the project needs >= 3.11); the venv keeps pip off the system Python.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev git ninja-build \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY crds ./crds
COPY operator ./operator
COPY trainer_image ./trainer_image
# The same install CI runs in a virtual environment (hack/setup-env.sh), plus the GPU-only kernels
# (flash-attn builds against the torch just installed, hence no build isolation).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[trainer]" \
 && pip install --no-cache-dir --no-build-isolation "flash-attn==2.8.3.post2" "liger-kernel==0.8.5"
RUN groupadd --gid 10001 finetune \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin finetune
USER 10001:10001
EXPOSE 9400
# The operator mounts the resolved FineTuneJob (and its Datasets) at /etc/finetune/job.yaml.
ENTRYPOINT ["finetune"]
CMD ["run", "/etc/finetune/job.yaml"]
