#!/usr/bin/env bash
# Install the GPU image's locks into scratch venvs on a CPU machine (no GPU, no CUDA toolkit needed) and check
# them: every package imports, `qa_train` imports, `pip check` passes; prints the installed sizes.
#
#   docker/locks/gpu.txt   -> $SCRATCH/venv       (the training venv: CUDA torch, DeepSpeed, bitsandbytes, peft)
#   docker/locks/eval.txt  -> $SCRATCH/eval-venv  (the eval venv: vLLM with its torch, sentence-transformers)
#   optional (QA_CHECK_COMBINED=1): the rejected layout, vLLM resolved into the training venv, for its size.
#
# flash-attn is the one package not installed: no wheel on PyPI, and compiling it needs nvcc + tens of minutes;
# the GPU image installs its release wheel for the locked torch (`# cuda-only:` line of gpu.txt). DeepSpeed is
# built from its sdist with DS_BUILD_OPS=0 (no ops compiled; the image prebuilds cpu_adam/fused_adam with nvcc).
# Slow (downloads ~10 GB, needs ~35 GB free in /tmp while it runs) and not part of .ci/run.
#
# Usage: scripts/check_gpu_lock.sh
# Env:   CHECK_PYTHON (a python3.12), SCRATCH (/tmp/qa-gpu-lock-check), KEEP=1 (keep the venvs),
#        ONLY (venv,eval-venv), QA_CHECK_COMBINED=1, MIN_FREE_GB (15: stop below it)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
log() { printf '[check-gpu-lock %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
PY312=${CHECK_PYTHON:-$(ls /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 2>/dev/null | head -n1 || true)}
[ -x "$PY312" ] || { echo "error: need a Python 3.12 (CHECK_PYTHON)" >&2; exit 2; }
UV=${UV:-$(command -v uv || echo "$REPO/.venv/bin/uv")}
SCRATCH=${SCRATCH:-/tmp/qa-gpu-lock-check}
MIN_FREE_GB=${MIN_FREE_GB:-15}
export UV_CACHE_DIR="$SCRATCH/uv-cache" UV_LINK_MODE=hardlink UV_PYTHON_DOWNLOADS=never
index_url=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
idx=()
[ -n "$index_url" ] && idx+=(--index-url "$index_url")
mkdir -p "$SCRATCH"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$SCRATCH"' EXIT
free_gb() { df -BG --output=avail "$SCRATCH" | tail -n1 | tr -dc 0-9; }
need_space() { local f; f=$(free_gb); log "free: ${f} GB"; [ "$f" -ge "$MIN_FREE_GB" ] || { log "FAIL: under ${MIN_FREE_GB} GB free, stopping"; exit 3; }; }
plain() { sed -e 's/ \\$//' -e '/^ *--hash=/d' -e '/^ *#/d' -e '/^$/d' "$1"; }
fails=0

check_lock() {  # check_lock NAME LOCKFILE
  local name=$1 lock=$2 venv="$SCRATCH/$1" t0=$SECONDS
  need_space
  log "== $name: $lock ($(plain "$lock" | wc -l) packages) -> $venv"
  "$UV" venv -q --seed --python "$PY312" "$venv"
  local vpy="$venv/bin/python"
  plain "$lock" >"$SCRATCH/$name.pins"
  # Build requirements of DeepSpeed's sdist (setup.py imports torch): the locked torch first, then the rest
  # with hashes, DeepSpeed built against that torch with no ops.
  if grep -q '^deepspeed==' "$SCRATCH/$name.pins"; then
    "$UV" pip install -q --python "$vpy" "${idx[@]}" -c "$SCRATCH/$name.pins" torch setuptools wheel packaging psutil ninja numpy py-cpuinfo
  fi
  DS_BUILD_OPS=0 "$UV" pip install -q --python "$vpy" "${idx[@]}" --require-hashes -r "$lock" --no-build-isolation-package deepspeed
  "$UV" pip install -q --python "$vpy" --no-deps "$REPO"
  log "$name: installed in $((SECONDS - t0)) s"
  "$vpy" - "$SCRATCH/$name.pins" <<'PYEOF' || fails=$((fails + 1))
import importlib, importlib.metadata as md, re, sys, warnings
warnings.filterwarnings("ignore")
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
pins = {norm(l.split("==")[0]): l.split("==")[1].strip() for l in open(sys.argv[1]) if "==" in l}
mods = {}
for mod, dists in md.packages_distributions().items():
    for d in dists:
        if norm(d) in pins and not mod.startswith("_") and mod.isidentifier():
            mods.setdefault(norm(d), []).append(mod)
wrong = {n: (v, md.version(n)) for n, v in pins.items() if md.version(n).split("+")[0] != v.split("+")[0]}
bad, ok, driver = [], 0, []
# Modules that load an NVIDIA *driver* library at import (present on a GPU host, never on this machine).
needs_driver = ("libnvidia-", "libcuda.so")
skip = {"nvidia", "triton_kernels"}  # namespace holders / GPU-only kernel packages with no importable root API
for dist, ms in sorted(mods.items()):
    for m in sorted(set(ms)):
        if m in skip:
            continue
        try:
            importlib.import_module(m); ok += 1
        except Exception as e:  # noqa: BLE001
            line = f"{dist}:{m}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            (driver if any(k in str(e) for k in needs_driver) else bad).append(line)
for m in ("qa_train", "qa_train.entrypoint.cli", "qa_train.train", "qa_train.inference.backends", "qa_train.evaluate.cli"):
    try:
        importlib.import_module(m); ok += 1
    except Exception as e:  # noqa: BLE001
        bad.append(f"project:{m}: {type(e).__name__}: {e}")
import torch
print(f"  torch {torch.__version__} (CUDA {torch.version.cuda}); cuda available here: {torch.cuda.is_available()}")
print(f"  imports: {ok} ok, {len(bad)} failed; installed != lock: {wrong or 'none'}")
for b in bad:
    print("  IMPORT FAIL", b)
for b in driver:
    print("  needs the GPU driver (not a failure here):", b)
sys.exit(1 if bad or wrong else 0)
PYEOF
  if "$vpy" -m pip check >"$SCRATCH/$name.pipcheck" 2>&1; then
    log "$name: pip check: $(cat "$SCRATCH/$name.pipcheck")"
  else
    log "$name: pip check FAILED:"; sed 's/^/    /' "$SCRATCH/$name.pipcheck"; fails=$((fails + 1))
  fi
  log "$name: venv size $(du -sm "$venv" | cut -f1) MB; largest:"
  # awk, not head, takes the first 8: head exiting early can SIGPIPE sort, and pipefail made that exit 141
  du -sm "$venv"/lib/python3.12/site-packages/* 2>/dev/null | sort -rn | awk 'NR <= 8 {printf "    %6d MB  %s\n", $1, $2}' | sed "s#$venv/lib/python3.12/site-packages/##"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$venv"
}

ONLY=${ONLY:-venv,eval-venv}   # which of the image's venvs to check
case ",$ONLY," in *,venv,*) check_lock venv docker/locks/gpu.txt ;; esac
case ",$ONLY," in *,eval-venv,*) check_lock eval-venv docker/locks/eval.txt ;; esac
if [ "${QA_CHECK_COMBINED:-0}" = 1 ]; then
  # The alternative layout: vLLM and the training stack in one venv, with vLLM's torch.
  { python3 docker/project_requirements.py pyproject.toml --extras gpu,eval --exclude flash-attn
    echo "cuda-python>=13"; } >"$SCRATCH/combined.in"  # as in scripts/lock.sh's eval lock
  "$UV" pip compile -q "$SCRATCH/combined.in" -o "$SCRATCH/combined.txt" --python-version 3.12 \
    --python-platform x86_64-manylinux_2_28 --generate-hashes "${idx[@]}"
  check_lock combined-venv "$SCRATCH/combined.txt"
fi
log "uv cache: $(du -sm "$UV_CACHE_DIR" | cut -f1) MB (unpacked wheels, hardlinked into the venvs; deleted with $SCRATCH)"
log "done: $fails failed check(s)"
exit $((fails > 0))
