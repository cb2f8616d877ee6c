#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from k8s.io/kubernetes
# (this folder's go.mod pins the release) into a cache keyed by version, outside the repo,
# so CI and later sessions reuse them. Skips when all three binaries are already there.
#
# Usage: bash hack/controlplane/build.sh        prints the bin dir on its last line
# Env:   K8S_BIN_DIR   override the output dir
#        FORCE=1       rebuild even when present
set -euo pipefail

K8S_VERSION=v1.37.2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="${K8S_BIN_DIR:-${HOME}/.cache/finetune-operator/k8s-${K8S_VERSION}/bin}"
commands=(kube-apiserver kube-controller-manager kube-scheduler)

have_all() {
  for c in "${commands[@]}"; do [[ -x "${bin_dir}/${c}" ]] || return 1; done
}

if [[ "${FORCE:-0}" != 1 ]] && have_all; then
  echo "k8s ${K8S_VERSION} binaries already built"
  echo "${bin_dir}"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: Go toolchain not found (need go >= 1.26)" >&2; exit 1; }

major="${K8S_VERSION#v}"; major="${major%%.*}"
minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
ldflags="-s -w"
# The same vars upstream's hack/lib/version.sh sets; without them clients see v0.0.0-master.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
  ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done

# Build into a scratch dir and move in at the end, so an interrupted build never leaves
# a half-written binary that the skip check above would trust.
mkdir -p "${bin_dir}"
scratch="$(mktemp -d "${bin_dir}/.build.XXXXXX")"
trap 'rm -rf "${scratch}"' EXIT

echo "building k8s ${K8S_VERSION} (${commands[*]}) into ${bin_dir}; a cold build takes 10-20+ min on 2 cores" >&2
start=$(date +%s)
pkgs=()
for c in "${commands[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${c}"); done
(
  cd "${here}"
  CGO_ENABLED=0 go build -trimpath -p "${BUILD_JOBS:-2}" \
    -ldflags "${ldflags}" -o "${scratch}/" "${pkgs[@]}"
)
for c in "${commands[@]}"; do mv -f "${scratch}/${c}" "${bin_dir}/${c}"; done
echo "built in $(( $(date +%s) - start ))s" >&2
echo "${bin_dir}"
