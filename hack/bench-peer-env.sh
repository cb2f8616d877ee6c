#!/usr/bin/env bash
# Creates (once) the peer's virtual environment for bench/: LLaMA-Factory from PyPI, kept apart
# from the project venv because it pins older transformers/peft/trl/datasets.
# torch is pinned to the project's version so both sides run the same kernels.
# Prints the venv path; idempotent (a .complete marker keyed by the pins below).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${FT_CACHE:-$HOME/.cache/finetune-operator}"
venv="$cache/llamafactory-venv"
# torch must match pyproject.toml's trainer pin: like-for-like kernels on both sides.
torch_pin=$(python3 - <<'PY'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["trainer"]
print(next(d for d in deps if d.startswith("torch==")))
PY
)
pins="llamafactory==0.9.5 $torch_pin psutil"
mkdir -p "$cache"
if [ "$(cat "$venv/.complete" 2>/dev/null)" != "$pins" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # pip's cache is on (the default) so a rebuild re-downloads nothing.
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q $pins
  "$venv/bin/pip" freeze > "$venv/resolved.txt"
  echo "$pins" > "$venv/.complete"
fi
echo "$venv"
