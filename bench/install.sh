#!/usr/bin/env bash
# Install what bench/bench.py needs on Debian/Ubuntu. Idempotent: runs
# `apt-get update` + `apt-get install` only when a package is missing.
set -euo pipefail

pkgs=(nginx-light wrk nghttp2-client curl valgrind procps util-linux python3 redis-server)
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "already installed: ${pkgs[*]}"
else
  echo "installing: ${missing[*]}"
  # A policy-rc.d that exits 101 tells dpkg not to start services, so the
  # distro nginx is not started on port 80 (the harness runs its own nginx
  # instances on 127.0.0.1). Only added if none exists, removed afterwards.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

for t in nginx wrk h2load curl valgrind taskset setsid python3; do
  printf '%-9s %s\n' "$t" "$(command -v "$t" || echo MISSING)"
done
