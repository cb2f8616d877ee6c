#!/usr/bin/env bash
# Installs checkov (IaC scanner, run on the rendered Helm chart) into its own virtual environment
# under the cache, keyed by version: its many pinned dependencies never touch the project venv.
# Idempotent: does nothing when that checkov is already installed.
#
# Usage: bash hack/packaging/install-checkov.sh      prints the checkov binary's path on its last line
# Env:   PYTHON   interpreter for the venv (default: python3.11, else python3)
set -euo pipefail

CHECKOV_VERSION=3.3.30
venv="${HOME}/.cache/finetune-operator/checkov-venv-${CHECKOV_VERSION}"
bin="${venv}/bin/checkov"

if [[ -x "${bin}" && -f "${venv}/.complete" ]]; then
  echo "${bin}"
  exit 0
fi
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
# Build next to the target and move in at the end: an interrupted install is never trusted.
rm -rf "${venv}.partial"
"${python}" -m venv "${venv}.partial"
"${venv}.partial/bin/pip" install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}" >&2
touch "${venv}.partial/.complete"
rm -rf "${venv}"
mv "${venv}.partial" "${venv}"
# A venv's scripts hold its absolute path in their shebang: rewrite the moved ones.
grep -rlI --null "${venv}.partial" "${venv}/bin" | xargs -0 -r sed -i "s#${venv}.partial#${venv}#g"
echo "${bin}"
