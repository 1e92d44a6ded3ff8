#!/usr/bin/env bash
# Evaluate one trained category (writes OUTPUT_DIR/CATEGORY/eval/: metrics.json, scores.json, metrics.md, vis/).
#   bash scripts/run_eval.sh DATASET_PATH DEVICE_ID PRE_CKPT_PATH CATEGORY [OUTPUT_DIR] [eval.py args...]
# PRE_CKPT_PATH must be the one used for training ("none" for seeded random weights).
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_entry eval.py "$@"
