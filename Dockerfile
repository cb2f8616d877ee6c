# syntax=docker/dockerfile:1.7
# Two images from one repository:
#   docker build --target operator -t finetune-operator .   (slim: the API + kopf, never torch)
#   docker build --target trainer  -t finetune-trainer .    (CUDA, torch, flash-attn, DeepSpeed, bitsandbytes)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

# ---------------------------------------------------------------- operator
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY crds ./crds
COPY operator ./operator
COPY trainer_image ./trainer_image
RUN pip install --no-cache-dir ".[operator]" \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin finetune
USER 10001
EXPOSE 8080 9090
# kopf's liveness endpoint on 8080; Prometheus metrics on 9090.
ENTRYPOINT ["kopf", "run", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz", "-m", "finetune_operator.main"]

# ---------------------------------------------------------------- trainer
FROM ${CUDA_IMAGE} AS trainer
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HF_HOME=/tmp/hf FINETUNE_CACHE_DIR=/tmp/finetune-cache
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev git ninja-build \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY crds ./crds
COPY operator ./operator
COPY trainer_image ./trainer_image
# The same install CI runs in a virtual environment (hack/setup-env.sh), plus the GPU-only kernels.
RUN pip install --no-cache-dir ".[trainer]" \
 && pip install --no-cache-dir --no-build-isolation "flash-attn==2.8.3.post2" "liger-kernel==0.8.5" \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin finetune
USER 10001
EXPOSE 9400
# The operator mounts the resolved FineTuneJob (and its Datasets) at /etc/finetune/job.yaml.
ENTRYPOINT ["finetune"]
CMD ["run", "/etc/finetune/job.yaml"]
