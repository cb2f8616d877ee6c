#!/usr/bin/env bash
# Creates (once) a virtual environment holding what the operator image holds, `.[operator]` and
# nothing else (no test or trainer packages: kopf, for one, loads the kubernetes client whenever it
# is installed), for bench/operator_scale.py to measure the operator as it ships.
# The dependencies are cached, keyed by their list; this checkout's code is installed (editable) into
# .venv-operator, layered on them (hack/venv.sh). Prints the path of .venv-operator.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${FT_CACHE:-$HOME/.cache/finetune-operator}"
# shellcheck source=hack/venv.sh
source hack/venv.sh
ensure_venv operator-venv operator .venv-operator
echo "$dest"
