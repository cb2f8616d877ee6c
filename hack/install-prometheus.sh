#!/usr/bin/env bash
# Installs Debian's prometheus package (the server binary and promtool) for the test fixtures.
# Idempotent: does nothing when both binaries are already on PATH.
# The package's own systemd service is never started: policy-rc.d forbids it during install,
# and the tests run /usr/bin/prometheus themselves on a free port.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  # Exit code 101 tells invoke-rc.d "action forbidden": the package installs without starting.
  printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
  $sudo_cmd chmod +x "$policy"
  created_policy=1
fi
trap 'if [ "$created_policy" = 1 ]; then $sudo_cmd rm -f "$policy"; fi' EXIT
$sudo_cmd apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends prometheus
# On a host booted with systemd the package enables its unit: keep it off (port 9090, disk use).
if [ -d /run/systemd/system ]; then
  $sudo_cmd systemctl disable --now prometheus.service || true
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
