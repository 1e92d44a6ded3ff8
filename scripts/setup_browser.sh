#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the web page test (tests/integration/test_serve.py), installed once;
# the test runs them headless against the service on 127.0.0.1. Needs root (as on CI) or both already installed.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "error: /usr/bin/chromium and /usr/bin/chromedriver are needed by the web page test: install the Debian" \
       "packages chromium and chromium-driver (as root: bash scripts/setup_browser.sh)" >&2
  exit 1
fi
echo "[setup] installing Debian's chromium and chromium-driver"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
