#!/usr/bin/env bash
# Creates the checkout's virtual environment, .venv: its own small venv with this checkout's code
# (editable), layered on a shared one outside the checkout that holds the dependencies, keyed by their
# list, so that CI's fresh clone reuses it (hack/venv.sh). Prints the shared environment's path.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${FT_CACHE:-$HOME/.cache/finetune-operator}"
# shellcheck source=hack/venv.sh
source hack/venv.sh
ensure_venv venv operator,trainer,dev .venv
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
