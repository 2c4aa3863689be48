#!/usr/bin/env bash
# How much the CPU image's layer order saves: a cold build (no cache) vs a rebuild after a source-only edit.
#
# Classic builder (no buildx on these machines). Works on a scratch copy of the build context (the edit never touches the repo). Needs the engine, the seeded
# base image and the wheelhouse (scripts/start-dockerd.sh, seed-base-image.sh, build-wheelhouse.sh).
# Usage: bench/bench_container_build.sh [--skip-cold]    Prints one JSON line.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"; docker rmi -f qa-expert/bench-cpu:cold qa-expert/bench-cpu:warm >/dev/null 2>&1 || true' EXIT
# Same context docker would send (.dockerignore applies), wheels hard-linked.
tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=runs --exclude='__pycache__' -cf - . | tar -C "$ctx" -xf -
build() {
  DOCKER_BUILDKIT=0 docker build --network host -f "$ctx/docker/Dockerfile.cpu" \
    --build-arg BASE_IMAGE=qa-expert/base:bookworm --build-arg PIP_OFFLINE=1 "$@" "$ctx" >>"${BENCH_LOG:-/dev/null}" 2>&1
}
cold=null
if [ "${1:-}" != --skip-cold ]; then
  t=$(date +%s.%N); build --no-cache -t qa-expert/bench-cpu:cold; cold=$(echo "$(date +%s.%N) - $t" | bc)
else
  build -t qa-expert/bench-cpu:cold
fi
build -t qa-expert/bench-cpu:cold  # prime: an ordinary cached build (a --no-cache build's layers are not reused)
printf '\n# bench edit %s\n' "$(date +%s%N)" >>"$ctx/qa_train/__init__.py"
t=$(date +%s.%N); build -t qa-expert/bench-cpu:warm; warm=$(echo "$(date +%s.%N) - $t" | bc)
ratio=null
[ "$cold" != null ] && ratio=$(echo "scale=1; $cold / $warm" | bc)
printf '{"cold_build_s": %s, "source_edit_rebuild_s": %.1f, "speedup": %s}\n' "$cold" "$warm" "$ratio"
