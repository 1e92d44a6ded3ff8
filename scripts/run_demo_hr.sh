#!/usr/bin/env bash
# High-resolution demo: generated 2048x2048 leather (10 train; 10 test, 5 of them with one defect each, some only a
# few pixels wide), tiled PatchCore (512-pixel tiles, one memory bank, thumbnail branch, validation-based score
# normalisation; configs/hr_patchcore.yaml) with ImageNet MobileNetV2, exported and run by the C++ runner
# (ascend310_infer, one run per task folder), then the same PatchCore on the whole image downscaled to 224x224,
# side by side. About 4 minutes on 2 cores (243 s in the last run).
#   bash scripts/run_demo_hr.sh [OUT_DIR]     (default demo_output/hr; a log of the run is OUT_DIR/demo_hr.log)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-demo_output/hr}
mkdir -p "$out"
exec > >(tee "$out/demo_hr.log") 2>&1
start=$(date +%s)

bash scripts/setup_env.sh
bash scripts/get_mobilenet_weights.sh
py=.venv/bin/python
category=synthetic_leather_2k
ckpt=pretrained/mobilenet_v2_imagenet.ckpt
common=(--dataset_path "$out/data" --category "$category" --output_dir "$out/models" --pre_ckpt_path "$ckpt" --seed 0)

echo "== 1/5 generate 2048x2048 data ($out/data/$category)"
if [[ ! -d "$out/data/$category" ]]; then
  $py generate_data.py --output_path "$out/data" --category "$category" --texture leather --image_size 2048 \
    --n_train 10 --n_test_good 5 --n_test_defect 1 --min_defect_px 3 --max_defect_px 80 --seed 0
fi

echo "== 2/5 train the tiled model (memory estimate first, peak RSS last; per-task logs in $out/models/$category/logs)"
$py train.py --config configs/hr_patchcore.yaml "${common[@]}"

echo "== 3/5 evaluate (table, $out/models/$category/eval/: metrics, scores, pictures)"
$py eval.py "${common[@]}"

echo "== 4/5 export (tile and thumbnail models, one bank per task) and C++ inference on the same test set"
cpp_start=$(date +%s)
$py export.py --checkpoint_dir "$out/models/$category" --ckpt_file "$ckpt"
bash scripts/run_infer_cpp.sh "$out/models/$category/export/patchcore_512x512_lite.mindir" "$out/data" y \
  "$category" CPU 0 "$out/infer"
# The runner's inputs (float32 tiles, 3 MB each) come to ~0.5 GB here: not worth keeping in a demo folder once
# the metrics are computed.
rm -rf "$out/infer/$category/preprocess_Result"
echo "export + C++ inference: $(( $(date +%s) - cpp_start )) s"

echo "== 5/5 the same PatchCore on the whole image at 224x224, side by side"
$py -m benchmarks.bench_hr --hr_model "$out/models/$category" --data_root "$out/data" --category "$category" \
  --pre_ckpt_path "$ckpt" --cpp_acc "$out/infer/$category/acc_$category.json" --json "$out/bench_hr.json"

echo "high-resolution demo finished in $(( $(date +%s) - start )) s;" \
  "results: $out/models/$category/eval/, $out/bench_hr.json"
