#!/usr/bin/env bash
# Serve a trained model over HTTP on this machine (127.0.0.1): POST /predict, GET /health, /model, /metrics, a web
# page at /. HOST=0.0.0.0 listens on every interface (put it behind your own firewall or reverse proxy).
#   bash scripts/run_serve.sh MODEL_DIR [PORT] [serve.py args...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 ]]; then echo "usage: bash scripts/run_serve.sh MODEL_DIR [PORT] [serve.py args...]" >&2; exit 2; fi
model_dir=$1 port=${2:-8080}
shift $(( $# < 2 ? $# : 2 ))
[[ -f "$model_dir/model.json" ]] || { echo "error: $model_dir/model.json: no trained model here" >&2; exit 2; }
bash scripts/setup_env.sh
exec .venv/bin/python serve.py --model_dir "$model_dir" --host "${HOST:-127.0.0.1}" --port "$port" "$@"
