#!/usr/bin/env bash
# Build ascend310_infer/build/patchcore_infer.
#
# MindSpore Lite SDK: $MS_LITE_HOME if set (a folder with include/api/ and lib/), otherwise
# third_party/mindspore_lite/, fetched once from PyPI's mindspore-lite 2.0.0 wheel (the wheel is
# cp37-only but its include/ and lib/ are a complete C++ runtime; ~170 MB download).
# Needs cmake, g++, faiss (Debian: libfaiss-dev) and OpenBLAS's OpenMP build (libopenblas0-openmp, for
# fast faiss scoring); installs them with apt-get when missing and running as root.
# Safe to run again: it only re-does what is missing or out of date.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
lite_version="2.0.0"

install_build_tools() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v g++ >/dev/null || missing+=(g++)
    [ -f /usr/include/faiss/index_io.h ] || missing+=(libfaiss-dev)
    compgen -G "/usr/lib/*/openblas-openmp/libblas.so.3" >/dev/null || missing+=(libopenblas0-openmp)
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "build.sh: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "build.sh: installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

fetch_lite_sdk() {
    local target="$1"
    [ -f "$target/include/api/model.h" ] && [ -f "$target/lib/libmindspore-extendrt_python.so" ] && return
    echo "build.sh: fetching mindspore-lite==$lite_version from PyPI into $target"
    mkdir -p "$(dirname "$target")"
    # Download next to the target (git-ignored). Global: the EXIT trap may run after this function.
    work="$(mktemp -d "$(dirname "$target")/.download.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    "$python" -m pip download --quiet --no-deps "mindspore-lite==$lite_version" --python-version 3.7 \
        --only-binary=:all: --platform manylinux1_x86_64 -d "$work"
    # Unpack only the C++ headers and runtime libraries, then move them into place in one step.
    "$python" - "$work" <<'PY'
import glob, os, sys, zipfile
work = sys.argv[1]
(wheel,) = glob.glob(os.path.join(work, "mindspore_lite-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith(("mindspore_lite/include/", "mindspore_lite/lib/")) and not name.endswith("/"):
            archive.extract(name, os.path.join(work, "unpacked"))
PY
    rm -rf "$target"
    mv "$work/unpacked/mindspore_lite" "$target"
    rm -rf "$work"
    trap - EXIT
}

install_build_tools
if [ -n "${MS_LITE_HOME:-}" ]; then
    sdk="$MS_LITE_HOME"
    [ -f "$sdk/include/api/model.h" ] || { echo "build.sh: MS_LITE_HOME=$sdk has no include/api/model.h" >&2; exit 1; }
else
    sdk="$here/third_party/mindspore_lite"
    fetch_lite_sdk "$sdk"
fi

cmake -S "$here" -B "$here/build" -DMS_LITE_HOME="$sdk" >/dev/null
cmake --build "$here/build" -j "$(nproc)"
echo "build.sh: built $here/build/patchcore_infer"
