#!/usr/bin/env bash
# Runs helm, built from helm.sh/helm/v4 (hack/helm/go.mod pins the release) into a cache keyed by
# version outside the repo, so CI and later sessions reuse it. Builds it first when it is missing.
#
# Usage: bash hack/helm.sh ARGS...     runs `helm ARGS...`
#        bash hack/helm.sh --build      builds only; prints the binary's path on its last line
# Env:   HELM_BIN_DIR   override the output dir
#        FORCE=1        rebuild even when present
set -euo pipefail

HELM_VERSION=v4.3.1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${HELM_BIN_DIR:-${HOME}/.cache/finetune-operator/helm-${HELM_VERSION}/bin}"
helm="${bin_dir}/helm"

build() {
  command -v go >/dev/null || { echo "helm.sh: Go toolchain not found (need go >= 1.26)" >&2; exit 1; }
  # Build into a scratch dir and move in at the end, so an interrupted build never leaves
  # a half-written binary that the skip check would trust.
  mkdir -p "${bin_dir}"
  scratch="$(mktemp -d "${bin_dir}/.build.XXXXXX")"
  trap 'rm -rf "${scratch}"' EXIT
  echo "building helm ${HELM_VERSION} into ${bin_dir}; a cold build takes 5-10 min on 2 cores" >&2
  local start
  start=$(date +%s)
  # The same version vars upstream's Makefile sets; without them `helm version` says v4.x-unreleased.
  local ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}"
  ldflags+=" -X helm.sh/helm/v4/internal/version.metadata= -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  (
    cd "${here}/helm"
    CGO_ENABLED=0 go build -trimpath -p "${BUILD_JOBS:-2}" -ldflags "${ldflags}" \
      -o "${scratch}/helm" helm.sh/helm/v4/cmd/helm
  )
  mv -f "${scratch}/helm" "${helm}"
  echo "built in $(( $(date +%s) - start ))s" >&2
}

if [[ "${FORCE:-0}" == 1 || ! -x "${helm}" ]]; then
  build
fi
if [[ "${1:-}" == "--build" ]]; then
  echo "${helm}"
  exit 0
fi
exec "${helm}" "$@"
