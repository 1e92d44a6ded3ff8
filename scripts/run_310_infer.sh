#!/usr/bin/env bash
# The model zoo's older name and argument order for scripts/run_infer_cpp.sh:
#   bash scripts/run_310_infer.sh MINDIR_PATH DATASET_PATH NEED_PREPROCESS [DEVICE_ID] CATEGORY
# DEVICE_TYPE (environment, default CPU) picks CPU or Ascend; OUTPUT_DIR (environment) as in run_infer_cpp.sh.
set -euo pipefail
usage="usage: bash scripts/run_310_infer.sh MINDIR_PATH DATASET_PATH NEED_PREPROCESS(y|n) [DEVICE_ID] CATEGORY"
case $# in
    4) device_id=0 category=$4 ;;
    5) device_id=$4 category=$5 ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_infer_cpp.sh" "$1" "$2" "$3" "$category" "${DEVICE_TYPE:-CPU}" \
    "$device_id" "${OUTPUT_DIR:-infer_output}"
