#!/usr/bin/env bash
# The demo on a fresh machine: install, generate a dataset, train, evaluate, print the metric table.
# Everything lands in demo_output/ (git-ignored); a log of the whole run is demo_output/demo.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo_output
mkdir -p "$out"
exec > >(tee "$out/demo.log") 2>&1
start=$(date +%s)

bash scripts/setup_env.sh
py=.venv/bin/python
category=synthetic_leather

echo "== 1/3 generate data ($out/data/$category)"
if [[ ! -d "$out/data/$category" ]]; then
  $py generate_data.py --output_path "$out/data" --category "$category" --texture leather --image_size 256 \
    --n_train 40 --n_test_good 10 --n_test_defect 5 --seed 0
fi

echo "== 2/3 train"
$py train.py --dataset_path "$out/data" --category "$category" --output_dir "$out/models" --seed 0

echo "== 3/3 evaluate"
$py eval.py --dataset_path "$out/data" --category "$category" --output_dir "$out/models" --seed 0

echo "demo finished in $(( $(date +%s) - start )) s; results: $out/models/$category/eval/"
