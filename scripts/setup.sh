#!/usr/bin/env bash
# Creates .venv and installs XDiffusion with everything it needs. Idempotent.
# torch goes first: CPU build (2.13.0) by default, a CUDA build when an NVIDIA GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        $PIP install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
    else
        $PIP install -q torch==2.13.0
    fi
fi
$PIP install -q -e ".[slicer,test]"
.venv/bin/python -c "import XDiffusionLib, torch, diffusers, slicer" || { echo "setup failed: XDiffusionLib does not import" >&2; exit 1; }
