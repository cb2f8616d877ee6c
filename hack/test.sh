#!/usr/bin/env bash
# The test command README.md gives: installs what is missing on a fresh machine, then lints,
# type-checks, checks the generated CRDs and runs every test tier (unit, trainer, e2e on the real
# control plane, S3 and Prometheus). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash hack/setup-env.sh | tail -n 1)
export PATH="$PWD/.venv/bin:$PATH"
bash hack/install-prometheus.sh
bash hack/controlplane/build.sh
bash hack/helm.sh --build

echo "== lint"
ruff check .
ruff format --check .
echo "== types"
mypy crds/finetune_api operator/finetune_operator trainer_image/finetune_trainer
echo "== generated CRDs (crds/ and the chart's copy) are current"
finetune crds --check
echo "== tests (venv $venv)"
# pytest exits 5 when it collects nothing: that is a failure here, as any non-zero exit is.
python -m pytest -p no:cacheprovider "$@"
