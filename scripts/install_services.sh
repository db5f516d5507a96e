#!/usr/bin/env bash
# Server software the integration tests start themselves: PostgreSQL (Debian's server
# binaries), HAProxy (the load balancer of the scale-out tests), Chromium for the web page
# test (install_browser.sh), and tritonserver with perf_analyzer (install_triton.sh).
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)  # the load balancer (deploy/haproxy.cfg)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ -f scripts/install_browser.sh ]; then
  bash scripts/install_browser.sh
fi
bash scripts/install_triton.sh
