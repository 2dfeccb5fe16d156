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
# Debian packages for the browser app (xdiffusion app, Testing/test_web_app.py): Chromium for the
# Playwright tests (never `playwright install`) and EGL/Mesa for offscreen VTK rendering. Installed
# only when missing, and only as root where apt-get exists; a failure is a warning, not fatal.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    missing=""
    [ -x /usr/bin/chromium ] || missing="$missing chromium"
    for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri libx11-6; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } \
            || echo "setup: warning: could not install$missing (needed by the web app and its tests)" >&2
    fi
fi
.venv/bin/python -c "import XDiffusionLib, torch, diffusers, slicer, psutil" || { echo "setup failed: XDiffusionLib does not import" >&2; exit 1; }
# Export the shipped model's U-Net for ONNX Runtime once (cached per weights and torch version), so
# the first reconstruction does not wait for it; without it, the first run exports it itself.
.venv/bin/python -c "from XDiffusionLib.model.onnx_runtime import warm_cache; warm_cache()" \
    || echo "setup: warning: could not prepare the ONNX Runtime graph (reconstructions fall back to torch)" >&2
