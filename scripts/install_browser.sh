#!/usr/bin/env bash
# Install what the browser test (tests/gateway/api/test_gateway_web.py) needs: Debian's
# Chromium and the Playwright Python package. Idempotent. Playwright's own browser download
# is not used; the test points Playwright at /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/chromium ]]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends chromium; then
        apt-get update
        apt-get install -y --no-install-recommends chromium
    fi
fi

if ! .venv/bin/python -c "import playwright" 2>/dev/null; then
    .venv/bin/pip install --quiet playwright
fi
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo missing)"
echo "playwright: $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("playwright"))')"
