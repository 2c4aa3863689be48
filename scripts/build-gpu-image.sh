#!/usr/bin/env bash
# Build docker/Dockerfile (the GPU image) on a CPU machine without Docker Hub, as proof that it builds.
#
# Why: the GPU image's real bases (nvidia/cuda devel, ubuntu) cannot be pulled here, but its build is what
# decides whether DeepSpeed's ops are prebuilt for CUDA, whether every wheel is hash-checked and whether the
# runtime can compile what its libraries compile. This builds the same Dockerfile on the offline Debian
# bookworm base of scripts/seed-base-image.sh (Python 3.11, so the eval venv comes from eval-py311.txt).
# What this machine cannot produce is left out *visibly* (the image's qa-expert.skipped label):
#   flash-attn   its release wheel is a GitHub asset (unreachable here) for cp312; a source build takes hours
#   fused_adam   needs nvcc 12.x: PyPI's nvidia-cuda-nvcc-cu12 wheels carry only ptxas, the NVIDIA repositories
#                are unreachable, and a CUDA 13 nvcc does not match the training venv's CUDA 12.8 torch
# Then run scripts/check-gpu-image.sh on the result.
#
# Usage: scripts/build-gpu-image.sh [TAG]          (default qa-expert/train-gpu-check:latest)
# Env:   MIN_FREE_GB (20: refuse to start below it), QA_SKIP (flash-attn,fused_adam), LOG (runs/gpu-image/build.log)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-qa-expert/train-gpu-check:latest}
BASE=${QA_BASE_IMAGE:-qa-expert/base:bookworm}
QA_SKIP=${QA_SKIP:-flash-attn,fused_adam}
MIN_FREE_GB=${MIN_FREE_GB:-20}
LOG=${LOG:-runs/gpu-image/build.log}
mkdir -p "$(dirname "$LOG")"
log() { printf '[build-gpu-image %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

root=$(docker info -f '{{.DockerRootDir}}' 2>/dev/null) || { echo "error: no Docker engine (scripts/start-dockerd.sh)" >&2; exit 2; }
free=$(df -BG --output=avail "$root" | tail -n1 | tr -dc 0-9)
[ "$free" -ge "$MIN_FREE_GB" ] || { echo "error: ${free} GB free under $root, need ${MIN_FREE_GB}" >&2; exit 2; }
bash scripts/seed-base-image.sh
log "building $TAG on $BASE (skipping: ${QA_SKIP:-nothing}); ${free} GB free; log: $LOG"
t0=$SECONDS
# --network host: this engine has no bridge (scripts/start-dockerd.sh); the build downloads the locked wheels.
docker build --network host -f docker/Dockerfile -t "$TAG" \
  --build-arg BUILD_BASE_IMAGE="$BASE" --build-arg RUNTIME_BASE_IMAGE="$BASE" \
  --build-arg PYTHON_VERSION=3.11 --build-arg EVAL_LOCK=eval-py311.txt \
  --build-arg QA_SKIP="$QA_SKIP" . 2>&1 | tee "$LOG"
log "built $TAG in $((SECONDS - t0)) s; size $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')"
docker image inspect -f '{{json .Config.Labels}}' "$TAG"
