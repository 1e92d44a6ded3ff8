#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what it needs, then runs pytest.
# Usage: bash scripts/run_tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
# Only the web page test needs the browser: without it (no root to install it) that test fails, the rest run.
bash scripts/setup_browser.sh || echo "warning: no chromium/chromedriver: tests/integration/test_serve.py's page test will fail" >&2
exec .venv/bin/python -m pytest "$@"
