#!/usr/bin/env bash
# The main job of README.md: set up, then fine-tune the sft-lora example on a tiny:// model locally.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup-env.sh >/dev/null
exec .venv/bin/finetune run examples/sft-lora.yaml "$@"
