# Shared by run_train.sh and run_eval.sh: positional arguments -> train.py / eval.py.
# run_entry ENTRY DATASET_PATH DEVICE_ID PRE_CKPT_PATH CATEGORY [OUTPUT_DIR] [extra args...]
run_entry() {
  local entry=$1; shift
  local usage="usage: bash scripts/run_${entry%.py}.sh DATASET_PATH DEVICE_ID PRE_CKPT_PATH CATEGORY [OUTPUT_DIR] [${entry} args...]"
  if [[ $# -lt 4 ]]; then echo "$usage" >&2; return 2; fi
  local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local dataset_path=$1 device_id=$2 pre_ckpt=$3 category=$4 output_dir=${5:-output}
  shift $(( $# < 5 ? $# : 5 ))
  [[ -d "$dataset_path" ]] || { echo "error: $dataset_path: dataset path not found" >&2; return 2; }
  [[ "$device_id" =~ ^[0-9]+$ ]] || { echo "error: DEVICE_ID must be a number, got '$device_id'" >&2; echo "$usage" >&2; return 2; }
  local ckpt_args=()
  if [[ "$pre_ckpt" != "none" && -n "$pre_ckpt" ]]; then
    [[ -f "$pre_ckpt" ]] || { echo "error: $pre_ckpt: backbone checkpoint not found" >&2; return 2; }
    ckpt_args=(--pre_ckpt_path "$pre_ckpt")
  fi
  bash "$root/scripts/setup_env.sh"
  "$root/.venv/bin/python" "$root/$entry" --dataset_path "$dataset_path" --category "$category" \
    --output_dir "$output_dir" --device_target "${DEVICE_TARGET:-CPU}" --device_id "$device_id" "${ckpt_args[@]}" "$@"
}
