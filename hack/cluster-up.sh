#!/usr/bin/env bash
# Starts the same real control plane the e2e tests use (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, two fake GPU nodes) and keeps it up until Ctrl-C.
# Prints the `export KUBECONFIG=...` line to use it from another shell.
# Builds the Kubernetes binaries first when they are not cached (10-20+ min, once).
#
# Usage: hack/cluster-up.sh [--state-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[[ -x "${python}" ]] || { echo "no ${python}: run hack/setup-env.sh first" >&2; exit 1; }
exec "${python}" -m tests.fixtures.cluster up "$@"
