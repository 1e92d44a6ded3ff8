#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what it needs, then runs pytest.
# Usage: bash scripts/run_tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
bash scripts/setup_browser.sh
exec .venv/bin/python -m pytest "$@"
