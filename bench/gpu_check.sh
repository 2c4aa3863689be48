#!/usr/bin/env bash
# One short GPU check (bench/gpu_check.py, <= 10 min, one JSON): packed-vs-unpacked attention, packed vs padded
# tokens/s + MFU on a ~0.6B random Llama, one QLoRA step. Without a GPU: python bench/gpu_check.py --tiny
# On a GPU machine with the project installed (e.g. inside the qa-expert/train image):
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python bench/gpu_check.py "$@"
