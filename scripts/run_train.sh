#!/usr/bin/env bash
# Train one category (writes OUTPUT_DIR/CATEGORY/: model.json, tasks.json, task_0/ (faiss.index, bank.json), logs/).
#   bash scripts/run_train.sh DATASET_PATH DEVICE_ID PRE_CKPT_PATH CATEGORY [OUTPUT_DIR] [train.py args...]
# PRE_CKPT_PATH may be "none": seeded random weights, for smoke tests only. OUTPUT_DIR defaults to ./output.
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_entry train.py "$@"
