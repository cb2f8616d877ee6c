#!/usr/bin/env bash
# Creates (once) a virtual environment holding what the operator image holds, `.[operator]` and
# nothing else (no test or trainer packages: kopf, for one, loads the kubernetes client whenever it
# is installed), for bench/operator_scale.py to measure the operator as it ships.
# Keyed by the operator's dependencies; the project itself is reinstalled (editable) on every call.
# Prints the venv path.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${FT_CACHE:-$HOME/.cache/finetune-operator}"
key=$(python3 - <<'PY'
import hashlib, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(hashlib.sha256(repr((p["dependencies"], p["optional-dependencies"]["operator"])).encode()).hexdigest()[:12])
PY
)
venv="$cache/operator-venv-$key"
mkdir -p "$cache"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q ".[operator]"
  touch "$venv/.complete"
fi
"$venv/bin/pip" install -q --no-deps -e .
touch "$venv/.last-used"
echo "$venv"
