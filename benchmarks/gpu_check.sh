#!/usr/bin/env bash
# GPU check for a machine with one NVIDIA GPU and no network (PyTorch with CUDA present; no TensorRT, no
# tritonserver; the repository copied over as is). Installs nothing. Writes everything to $OUT (or
# ./gpu-results) and prints a summary table last. Budget: under 6 minutes on an H100.
#
#   bash benchmarks/gpu_check.sh            (PYTHON=/path/to/python picks the interpreter; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
timeout 340 "${PYTHON:-python3}" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
