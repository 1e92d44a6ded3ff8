#!/usr/bin/env bash
# Create .venv and install the project's Python packages from the registries (idempotent).
# Usage: bash scripts/setup_env.sh [--test]     (--test adds pytest, hypothesis, torch for parity tests and Ray for
# the distributed-training tests; users who train on a Ray cluster: pip install -r requirements-distributed.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

reqs=requirements.txt
[[ "${1:-}" == "--test" ]] && reqs=requirements-test.txt

python_bin=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && \
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
    python_bin=$(command -v "$candidate"); break
  fi
done
if [[ -z "$python_bin" ]]; then
  echo "error: Python 3.11 is required (MindSpore 2.10.0 wheels are built for it); install python3.11" >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi

stamp=".venv/.installed-$(basename "$reqs" .txt)"
want=$(cat requirements.txt requirements-distributed.txt "$reqs" | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[setup] installing $reqs into .venv (first time: about 1 GB, a few minutes)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$reqs"
echo "$want" > "$stamp"
