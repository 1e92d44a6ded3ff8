#!/usr/bin/env bash
# Debian's PostgreSQL server for the inspection-record tests (tests/conftest.py's postgres_url fixture starts a
# throwaway cluster of it on 127.0.0.1), installed once. Needs root (as on CI) or the package already installed.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "error: the record tests need Debian's postgresql package (as root: bash scripts/setup_postgres.sh)" >&2
  exit 1
fi
echo "[setup] installing Debian's postgresql"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
