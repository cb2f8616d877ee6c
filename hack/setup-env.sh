#!/usr/bin/env bash
# Creates (once) and activates-by-symlink the project's virtual environment.
# The environment lives outside the checkout, keyed by the dependency list, so that
# CI's fresh clone reuses it and pip's cache makes a rebuild cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${FT_CACHE:-$HOME/.cache/finetune-operator}"
key=$(python3 - <<'PY'
import hashlib, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = repr((p["dependencies"], sorted(p["optional-dependencies"].items())))
print(hashlib.sha256(deps.encode()).hexdigest()[:12])
PY
)
venv="$cache/venv-$key"
mkdir -p "$cache"
# One build at a time (parallel runs would remove each other's half-built venv): wait for the lock.
exec 9>"$cache/.setup-env.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q ".[operator,trainer,dev]"
  touch "$venv/.complete"
fi
# Point the shared environment at this checkout's sources.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e .
ln -sfn "$venv" .venv
touch "$venv/.last-used"
# One venv per dependency set accumulates (several GB each): drop the ones no run has used for
# FT_VENV_KEEP_DAYS days (the Dockerfile install test's and the operator benchmark's venvs too). Never the current one.
keep_days="${FT_VENV_KEEP_DAYS:-3}"
for old in "$cache"/venv-* "$cache"/docker-operator-venv-* "$cache"/operator-venv-*; do
  [ -d "$old" ] && [ "$old" != "$venv" ] || continue
  marker="$old/.last-used"
  [ -e "$marker" ] || marker="$old"
  if [ -n "$(find "$marker" -maxdepth 0 -mtime +"$keep_days" 2>/dev/null)" ]; then
    rm -rf "$old"
  fi
done
echo "$venv"
