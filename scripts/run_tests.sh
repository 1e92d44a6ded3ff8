#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what it needs, then runs pytest.
# Usage: bash scripts/run_tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
# Only the web page test needs the browser: without it (no root to install it) that test fails, the rest run.
bash scripts/setup_browser.sh || echo "warning: no chromium/chromedriver: tests/integration/test_serve.py's page test will fail" >&2
# The record tests run on PostgreSQL too: without its server (no root to install it) those tests fail, the rest run.
bash scripts/setup_postgres.sh || echo "warning: no PostgreSQL server: the record tests on PostgreSQL will fail" >&2
# Two test processes (pytest-xdist), a test file each at a time: most tests wait on the command lines they start
# (MindSpore's start-up and graph compiles), so two overlap well on two cores (456 s instead of 825 s). "-n 0" after
# it runs in this process, e.g. to debug one test.
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
