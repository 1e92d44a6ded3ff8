#!/usr/bin/env bash
# Train and evaluate all 15 MVTec AD categories, then print a per-category table with a mean row
# (also OUTPUT_DIR/results.md and OUTPUT_DIR/results.json).
#   bash scripts/run_all_mvtec.sh [--reference_bn] [--config FILE] DATASET_PATH [PRE_CKPT_PATH] [DEVICE_ID] [OUTPUT_DIR]
# --reference_bn: the authors' BatchNorm update (patch.reference_bn_update in configs/patchcore.yaml), which every
# MVTec AD number they published includes: to reproduce their table. --config: train every category with FILE.
# BACKEND=ray: every category one Ray task (src/app/categories.py) on the cluster at RAY_ADDRESS (unset: Ray on this
# machine), CPUS_PER_CATEGORY CPUs each (default 1); the same table and results.json as the serial run. Every node
# must see the project, the dataset and OUTPUT_DIR at the same paths (docs/scaling.md).
set -uo pipefail
usage="usage: bash scripts/run_all_mvtec.sh [--reference_bn] [--config FILE] DATASET_PATH [PRE_CKPT_PATH] [DEVICE_ID] [OUTPUT_DIR]"
train_args=()
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --reference_bn) train_args+=(-o reference_bn_update=true); shift ;;
    --config) [[ $# -ge 2 && -f "$2" ]] || { echo "error: ${2:-}: --config file not found" >&2; exit 2; }
              train_args+=(--config "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
    *) echo "error: unknown option $1" >&2; echo "$usage" >&2; exit 2 ;;
  esac
done
if [[ $# -lt 1 ]]; then echo "$usage" >&2; exit 2; fi
here="$(cd "$(dirname "$0")" && pwd)"
dataset_path=$1; pre_ckpt=${2:-none}; device_id=${3:-0}; output_dir=${4:-output}
[[ -d "$dataset_path" ]] || { echo "error: $dataset_path: dataset path not found" >&2; exit 2; }
case "${BACKEND:-local}" in local|ray) ;; *) echo "error: BACKEND must be local or ray, got '$BACKEND'" >&2; exit 2 ;; esac
categories=(bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile toothbrush transistor wood zipper)
present=()
for c in "${categories[@]}"; do
  if [[ -d "$dataset_path/$c" ]]; then present+=("$c"); else echo "warning: $dataset_path/$c not found, skipped" >&2; fi
done
[[ ${#present[@]} -gt 0 ]] || { echo "error: $dataset_path: none of the 15 MVTec AD categories is there" >&2; exit 2; }
failed=()
if [[ "${BACKEND:-local}" == ray ]]; then
  bash "$here/setup_env.sh" && PYTHONPATH="$here/.." "$here/../.venv/bin/python" -m src.app.categories --cpus "${CPUS_PER_CATEGORY:-1}" \
    ${RAY_ADDRESS:+--address "$RAY_ADDRESS"} "$dataset_path" "$pre_ckpt" "$device_id" "$output_dir" "${present[@]}" \
    -- ${train_args[@]+"${train_args[@]}"} || failed=(ray)
else
  for c in "${present[@]}"; do
    echo "=== $c"
    if ! bash "$here/run_train.sh" "$dataset_path" "$device_id" "$pre_ckpt" "$c" "$output_dir" ${train_args[@]+"${train_args[@]}"} || \
       ! bash "$here/run_eval.sh" "$dataset_path" "$device_id" "$pre_ckpt" "$c" "$output_dir"; then
      failed+=("$c")
    fi
  done
fi
PYTHONPATH="$here/.." "$here/../.venv/bin/python" -m src.evaluation.report "$output_dir" "${present[@]}" || exit 2
if [[ ${#failed[@]} -gt 0 ]]; then
  [[ "${failed[*]}" == ray ]] || echo "error: failed categories: ${failed[*]}" >&2
  exit 1
fi
