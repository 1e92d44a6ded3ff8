#!/usr/bin/env bash
# C++ inference on one category's test images (model-zoo style), CPU here, Ascend where its runtime exists:
#   bash scripts/run_infer_cpp.sh MINDIR_PATH DATASET_PATH NEED_PREPROCESS CATEGORY \
#        [DEVICE_TYPE] [DEVICE_ID] [OUTPUT_DIR]
#   MINDIR_PATH      a model written by export.py (its folder holds export.json)
#   DATASET_PATH     folder holding CATEGORY/ (MVTec layout)
#   NEED_PREPROCESS  y: make the model inputs from the test images; n: reuse OUTPUT_DIR/CATEGORY/preprocess_Result
#   DEVICE_TYPE      CPU (default) or Ascend;  DEVICE_ID: default 0;  OUTPUT_DIR: default ./infer_output
# Builds ascend310_infer when needed, scores the patches in C++ (--bank_path), computes the metrics and prints
# the acc line; writes OUTPUT_DIR/CATEGORY/{preprocess_Result,result_Files,acc_CATEGORY.log,acc_CATEGORY.json,ng_CATEGORY/}
# (ng_CATEGORY/: a picture of every image decided NG, its regions outlined).
# A high-resolution export (any of its models as MINDIR_PATH) runs the runner once per task folder and once
# for the thumbnail, each with that folder's bank (a folder without inputs, a Retrieve task no tile was routed
# to, is skipped). Fusion models: the runner computes the features of every tile level; postprocess.py fuses
# and scores them in Python.
# Environment: THREADS (runner threads, default: all cores), PYTHON (default: the project's .venv),
# SAVE_FEATURES=1 to also keep the runner's patch-feature files (<stem>_0.npy; default 0: scores only).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage="usage: bash scripts/run_infer_cpp.sh MINDIR_PATH DATASET_PATH NEED_PREPROCESS(y|n) CATEGORY \
[DEVICE_TYPE(CPU|Ascend)] [DEVICE_ID] [OUTPUT_DIR]"
fail() { echo "error: $*" >&2; exit 2; }

if [[ $# -lt 4 || $# -gt 7 ]]; then echo "$usage" >&2; exit 2; fi
mindir=$1 dataset_path=$2 need_preprocess=$3 category=$4
device_type=${5:-CPU} device_id=${6:-0} output_dir=${7:-infer_output}
threads=${THREADS:-$(nproc)}
save_features=${SAVE_FEATURES:-0}

[[ -f "$mindir" ]] || fail "$mindir: model file not found (export one with export.py)"
export_dir="$(cd "$(dirname "$mindir")" && pwd)"
[[ -f "$export_dir/export.json" ]] || fail "$export_dir/export.json: not found (MINDIR_PATH must be written by export.py)"
[[ -d "$dataset_path/$category" ]] || fail "$dataset_path/$category: category folder not found"
[[ "$need_preprocess" =~ ^[yn]$ ]] || fail "NEED_PREPROCESS must be y or n, got '$need_preprocess'"
[[ "$device_type" == CPU || "$device_type" == Ascend ]] || fail "DEVICE_TYPE must be CPU or Ascend, got '$device_type'"
[[ "$device_id" =~ ^[0-9]+$ ]] || fail "DEVICE_ID must be a number, got '$device_id'"
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || fail "THREADS must be a positive number, got '$threads'"
[[ "$save_features" =~ ^[01]$ ]] || fail "SAVE_FEATURES must be 0 or 1, got '$save_features'"

if [[ -z "${PYTHON:-}" ]]; then
    bash "$root/scripts/setup_env.sh"
    PYTHON="$root/.venv/bin/python"
fi
work="$output_dir/$category"
inputs="$work/preprocess_Result"
results="$work/result_Files"
mkdir -p "$work"

# Checks the models and banks against export.json (sha256) before anything runs. One runner job per line:
# a plain export has one; a high-resolution export one per task folder and one for the thumbnail, each with
# its own bank, so every patch score is computed in C++ (except for fused tiles).
jobs="$(cd "$root" && "$PYTHON" -m src.app.runner_jobs "$export_dir/$(basename "$mindir")" "$inputs" "$results" \
    "$save_features")" || exit 2
mapfile -t jobs <<< "$jobs"

echo "[1/4] building the C++ runner if needed (log: $work/build.log)"
if ! PYTHON="$PYTHON" bash "$root/ascend310_infer/build.sh" > "$work/build.log" 2>&1; then
    tail -n 20 "$work/build.log" >&2
    fail "building ascend310_infer failed (full log: $work/build.log)"
fi

if [[ "$need_preprocess" == y ]]; then
    echo "[2/4] preprocessing $dataset_path/$category"
    "$PYTHON" "$root/preprocess.py" --export_dir "$export_dir" --dataset_path "$dataset_path" \
        --category "$category" --output_path "$inputs"
else
    [[ -f "$inputs/manifest.json" ]] || fail "$inputs/manifest.json: not found; run with NEED_PREPROCESS=y first"
    echo "[2/4] reusing the inputs in $inputs"
fi

echo "[3/4] running the model on $device_type (device $device_id, $threads threads)"
rm -rf "$results"  # a fresh folder: outputs of different runs must never mix
for job in "${jobs[@]}"; do
    IFS=$'\t' read -r -a job_args <<< "$job"
    for ((i = 0; i < ${#job_args[@]}; i++)); do
        [[ "${job_args[i]}" == --input_path ]] && job_inputs=${job_args[i + 1]}
    done
    if ! compgen -G "$job_inputs/*.npy" > /dev/null; then
        echo "$job_inputs: no inputs (no tile was routed to this task), skipped"
        continue
    fi
    "$root/ascend310_infer/build/patchcore_infer" "${job_args[@]}" --device_type "$device_type" \
        --device_id "$device_id" --threads "$threads"
done

echo "[4/4] computing the metrics"
"$PYTHON" "$root/postprocess.py" --export_dir "$export_dir" --result_path "$results" \
    --manifest "$inputs/manifest.json" --category "$category" --output_dir "$work"
