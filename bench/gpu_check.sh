#!/usr/bin/env bash
# One short GPU check (see bench/gpu_check.py): flash-attn varlen packed-vs-unpacked logits, packed tokens/s + MFU.
# On a GPU machine with the project installed (e.g. inside the qa-expert/train image):
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python bench/gpu_check.py "$@"
