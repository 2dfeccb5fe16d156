#!/usr/bin/env bash
# Fetches the wheels bench/gpu.sh installs on a GPU machine without internet, into .whl/
# (ignored by git). Run where pip reaches an index; PY_VERSION is the GPU machine's Python.
#
#   bench/gpu_wheels.sh            # Python 3.12, manylinux x86-64
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms="$platforms --platform $p"
done
# The packages XDiffusionLib needs beyond a CUDA torch image (which has numpy, scipy, safetensors,
# matplotlib, transformers, accelerate): the versions this checkout's .venv runs.
for name in diffusers SimpleITK nibabel pydicom importlib_metadata; do
    version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp $platforms -d .whl "$name==$version"
done
du -sh .whl
