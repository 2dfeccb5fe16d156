#!/usr/bin/env bash
# GPU benchmarks in one go (issue 13, item 4), for a machine with an NVIDIA GPU and a CUDA torch.
#
#   bench/gpu.sh                 # from the repository root; results in bench/results/gpu.json
#
# What it measures (bench/run_benchmarks.py, GPU section), in well under 8 minutes on an H100/H200:
#   paper_gpu_paper_setting  full-size paper profile, 155^3, 1 input slice, CFG 3: DDPM 1000 steps,
#                            one cross-section at a time, fp32 (per-step time x 1000), 1 and 5 views
#   paper_gpu_fast           same model and volume: 20 DPM-Solver++ steps, bf16, all sections batched,
#                            whole reconstructions, 1 and 5 views
#   compact_gpu              the shipped model on the demo case, default settings, fp32 and bf16
#
# Packages: it uses the python3 that holds torch (override with PYTHON=...). What is missing
# (diffusers, SimpleITK, nibabel, pydicom, ...) is installed from wheels in .whl/ when that folder
# exists (a machine without internet: fetch them beforehand with `bench/gpu_wheels.sh` where pip
# has an index), else from the package index. Nothing is installed into the system: the wheels go
# to a private target folder on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT_S=${GPU_BENCH_LIMIT_S:-470}   # stay under 8 minutes, installs included

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "bench/gpu.sh: $PY has no CUDA torch (or no GPU is visible): nothing to measure" >&2; exit 2; }
nvidia-smi -L || true

SITE=${XDIFFUSION_GPU_SITE:-/tmp/xdiffusion-gpu-site}
NEEDED="diffusers SimpleITK nibabel pydicom safetensors scipy matplotlib"
missing=""
for module in $NEEDED; do
    "$PY" -c "import $module" 2>/dev/null || missing="$missing $module"
done
if [ -n "$missing" ]; then
    echo "bench/gpu.sh: installing$missing into $SITE"
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    else
        "$PY" -m pip install -q --no-cache-dir --target "$SITE" $missing
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import XDiffusionLib, diffusers, SimpleITK" \
    || { echo "bench/gpu.sh: XDiffusionLib does not import with $PY (see the error above)" >&2; exit 1; }

timeout "$LIMIT_S" "$PY" bench/run_benchmarks.py --only paper_gpu_paper_setting paper_gpu_fast compact_gpu
"$PY" - <<'EOF'
import json
data = json.load(open("bench/results/gpu.json"))
print(json.dumps(data["machine"], indent=1))
for name, case in data["cases"].items():
    print(name, json.dumps({k: v for k, v in case.items() if k != "size"}))
EOF
