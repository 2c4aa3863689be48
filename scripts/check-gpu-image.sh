#!/usr/bin/env bash
# Check a built GPU image (scripts/build-gpu-image.sh) on a CPU machine, every container with --network none:
#   1. every package of both venvs imports (/opt/venv, /opt/eval-venv), and the project in both;
#   2. DeepSpeed reports accelerator_name == "cuda" with cpu_adam (+ fused_adam unless the image's
#      qa-expert.skipped label names it) prebuilt; cpu_adam's .so holds no AVX-512 (objdump: no zmm);
#   3. Python.h and gcc/g++ are there and build a C extension against this Python (what Triton does at run time);
#   4. vLLM imports in the eval venv (LLM, SamplingParams: what qa_train/inference/backends.py uses);
#   5. the driver floor: the entrypoint refuses a fake 535 driver with one line, through the same reader;
#   6. jobs/smoke.yaml through the image's own entrypoint on CPU, no sync (no network): as shipped (packed LoRA:
#      train, merge, hf eval), and full fine-tuning rendered for an A6000 with ZeRO-3 + CPU offload (DeepSpeed
#      launcher, DeepSpeedCPUAdam), then hf eval.
# Why: the image's build cannot see a GPU, so what it promises (ops, compilers, imports) is checked here, offline.
#
# Usage: scripts/check-gpu-image.sh [TAG]    (default qa-expert/train-gpu-check:latest)
# Env:   OUT (runs/gpu-image: logs, the smoke's run folder, timings.json), SMOKE_TIMEOUT (1800 s)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TAG=${1:-qa-expert/train-gpu-check:latest}
OUT=${OUT:-$REPO/runs/gpu-image}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-1800}
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT"
T0=$SECONDS
fails=0
log() { printf '[check-gpu-image %5ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
ok() { log "PASS $*"; }
bad() { log "FAIL $*"; fails=$((fails + 1)); }
declare -A TIMES=()
docker image inspect "$TAG" >/dev/null 2>&1 || { echo "error: no image $TAG (scripts/build-gpu-image.sh)" >&2; exit 2; }
labels=$(docker image inspect -f '{{json .Config.Labels}}' "$TAG")
skipped=$(docker image inspect -f '{{index .Config.Labels "qa-expert.skipped"}}' "$TAG")
log "image $TAG: $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}'); labels $labels"
run() { docker run --rm --network none "$@"; }

# --- 1. imports ---------------------------------------------------------------------------------------------
IMPORTS=$(cat <<'PYEOF'
import importlib, importlib.metadata as md, re, sys, warnings
import setuptools  # first: its distutils shim must come before anything that imports distutils
warnings.filterwarnings("ignore")
# Namespace holders / GPU-only kernel packages without an importable root API; modules that need the driver.
skip = {"nvidia", "triton_kernels", "cuda"}
needs_driver = ("libnvidia-", "libcuda.so", "NVIDIA driver", "no CUDA GPUs", "CUDA driver")
mods = sorted({(m, d) for m, ds in md.packages_distributions().items() for d in ds
               if m.isidentifier() and not m.startswith("_") and m not in skip})
ok, bad, drv = 0, [], []
for m, d in mods + [("qa_train.entrypoint.cli", "project"), ("qa_train.train", "project"), ("qa_train.inference.backends", "project")]:
    try:
        importlib.import_module(m); ok += 1
    except BaseException as e:  # noqa: BLE001
        line = f"{d}:{m}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        (drv if any(k in str(e) for k in needs_driver) else bad).append(line)
import torch
print(f"{sys.prefix}: python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{len(list(md.distributions()))} distributions, {ok} modules imported, {len(bad)} failed, {len(drv)} need the driver")
for b in bad: print("  IMPORT FAIL", b)
for b in drv: print("  needs the GPU driver (not a failure here):", b)
sys.exit(1 if bad else 0)
PYEOF
)
for venv in /opt/venv /opt/eval-venv; do
  t=$SECONDS
  if run -i --entrypoint "$venv/bin/python" "$TAG" - <<<"$IMPORTS" >"$OUT/imports${venv//\//-}.log" 2>&1; then
    ok "imports $venv: $(grep 'modules imported' "$OUT/imports${venv//\//-}.log")"
  else
    bad "imports $venv:"; sed 's/^/    /' "$OUT/imports${venv//\//-}.log" | tail -n 30 >&2
  fi
  TIMES[imports${venv//\//-}]=$((SECONDS - t))
done

# --- 2. DeepSpeed ops ---------------------------------------------------------------------------------------
need=cpu_adam
case ",$skipped," in *,fused_adam,*) log "fused_adam not required: the image's label says it was skipped" ;; *) need="$need,fused_adam" ;; esac
if run -i --entrypoint python "$TAG" - "$need" >"$OUT/deepspeed.log" 2>&1 <<'PYEOF'
import glob, subprocess, sys
import deepspeed
from deepspeed.git_version_info import accelerator_name, installed_ops
print("accelerator_name", accelerator_name, "prebuilt", sorted(k for k, v in installed_ops.items() if v))
assert accelerator_name == "cuda", accelerator_name
missing = [op for op in sys.argv[1].split(",") if not installed_ops.get(op)]
assert not missing, f"not prebuilt: {missing}"
for so in glob.glob(f"{deepspeed.__path__[0]}/ops/adam/*.so"):
    dis = subprocess.run(["objdump", "-d", so], capture_output=True, text=True, check=True).stdout
    print(f"{so}: {dis.count('zmm')} zmm, {dis.count('ymm')} ymm operands")
    assert "zmm" not in dis, so
PYEOF
then ok "deepspeed: $(tr '\n' ' ' <"$OUT/deepspeed.log")"; else bad "deepspeed: $(cat "$OUT/deepspeed.log")"; fi

# --- 3. headers + compilers ---------------------------------------------------------------------------------
if run --entrypoint bash "$TAG" -c 'set -e
inc=$(python -c "import sysconfig; print(sysconfig.get_paths()[\"include\"])")
test -f "$inc/Python.h"
printf "#include <Python.h>\nstatic PyModuleDef m = {PyModuleDef_HEAD_INIT, \"probe\"};\nPyMODINIT_FUNC PyInit_probe(void) { return PyModule_Create(&m); }\n" >/tmp/probe.c
gcc -shared -fPIC -O2 -I"$inc" /tmp/probe.c -o /tmp/probe$(python -c "import sysconfig; print(sysconfig.get_config_var(\"EXT_SUFFIX\"))")
cd /tmp && python -c "import probe; print(\"built and imported a C extension against\", \"$inc/Python.h\")"
echo "int main(){return 0;}" > /tmp/x.cc && g++ /tmp/x.cc -o /tmp/x && /tmp/x
gcc --version | head -n1; g++ --version | head -n1' >"$OUT/compilers.log" 2>&1; then
  ok "compilers: $(tr '\n' ' ' <"$OUT/compilers.log")"
else bad "compilers: $(cat "$OUT/compilers.log")"; fi

# --- 4. vLLM ------------------------------------------------------------------------------------------------
if run --entrypoint /opt/eval-venv/bin/python "$TAG" -c \
  "import vllm, torch, transformers; from vllm import LLM, SamplingParams; print('vllm', vllm.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda, 'transformers', transformers.__version__)" \
  >"$OUT/vllm.log" 2>&1; then ok "$(tail -n1 "$OUT/vllm.log")"; else bad "vllm: $(tail -n 20 "$OUT/vllm.log")"; fi

# --- 5. driver floor ----------------------------------------------------------------------------------------
printf 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n' >"$OUT/fake-nvidia-version"
set +e
run -v "$OUT/fake-nvidia-version:/fake/version:ro" -e QA_NVIDIA_VERSION_FILE=/fake/version "$TAG" \
  --spec /opt/qa-expert/jobs/smoke.yaml >"$OUT/driver.log" 2>&1
rc=$?
set -e
if [ "$rc" != 0 ] && [ "$(wc -l <"$OUT/driver.log")" = 1 ] && grep -q "^error: NVIDIA driver 535.104.05 is older than" "$OUT/driver.log"; then
  ok "driver floor (exit $rc): $(cat "$OUT/driver.log")"
else bad "driver floor (exit $rc): $(cat "$OUT/driver.log")"; fi

# --- 6. jobs/smoke.yaml through the entrypoint: (a) as shipped (packed LoRA: train, merge, hf eval) and (b) full
# fine-tuning rendered for an A6000 with ZeRO-3 + CPU offload (DeepSpeed launcher, DeepSpeedCPUAdam), then hf eval.
# (LoRA under ZeRO-3 cannot run on CPU with a CUDA torch: peft's trainable-tokens layer calls
# torch.cuda.current_device() whenever ZeRO-3 is on — a GPU-only path.)
work=$(mktemp -d "$OUT/smoke.XXXXXX")
mkdir -p "$work/data" "$work/runs" && chmod 0777 "$work/data" "$work/runs"
"$PY" - "$work" <<'PYEOF'
import json, sys, yaml
from launch.render import render
from qa_train.spec import parse_job
for name, gpu, lora, offload in (("smoke-lora", "cpu", True, "auto"), ("smoke-zero3", "a6000", False, "all")):
    spec = yaml.safe_load(open("jobs/smoke.yaml"))
    spec.pop("sync", None)  # --network none: nothing to sync to
    spec.update(run_name=name, output_root="/runs", use_lora=lora)
    if not lora:
        spec["stages"] = ["train", "eval"]
    r = render(parse_job(spec), gpu, offload=offload)
    if not lora:
        assert r.plan.launcher == "deepspeed" and r.deepspeed["zero_optimization"]["offload_param"]["device"] == "cpu"
    open(f"{sys.argv[1]}/{name}.json", "w").write(json.dumps(r.model_dump(mode="json")))
PYEOF
run --entrypoint python -v "$work/data:/data" "$TAG" -m qa_train make-smoke-data /data --train 64 --hotpot 8 \
  >"$OUT/smoke-data.log" 2>&1 || bad "make-smoke-data: $(tail -n 5 "$OUT/smoke-data.log")"
for name in smoke-lora smoke-zero3; do
  t=$SECONDS
  set +e
  timeout "$SMOKE_TIMEOUT" docker run --rm --network none --shm-size 1g -e QA_JOB_SPEC="$(cat "$work/$name.json")" \
    -v "$work/data:/data:ro" -v "$work/runs:/runs" "$TAG" >"$OUT/$name.log" 2>&1
  rc=$?
  set -e
  TIMES[$name]=$((SECONDS - t))
  summary=$(find "$work/runs/$name/eval" -name '*summary.json' 2>/dev/null | head -n1)
  if [ "$rc" = 0 ] && [ -n "$summary" ] && grep -q '"ok": true' "$OUT/$name.log"; then
    ok "$name in ${TIMES[$name]} s: $(grep '"ok": true' "$OUT/$name.log" | tail -n1)"
  else
    bad "$name exit $rc (summary: ${summary:-none}); last lines:"; tail -n 15 "$OUT/$name.log" >&2
  fi
done
[ -d "$work/runs/smoke-lora/merged" ] || bad "smoke-lora: no merged/ folder"
grep -q "Adam Optimizer #0 is created with AVX2" "$OUT/smoke-zero3.log" || bad "smoke-zero3: DeepSpeedCPUAdam not used"

printf '{"image": "%s", "failures": %d, "imports_venv_s": %s, "imports_eval_venv_s": %s, "smoke_lora_s": %s, "smoke_zero3_s": %s}\n' \
  "$TAG" "$fails" "${TIMES[imports-opt-venv]:-null}" "${TIMES[imports-opt-eval-venv]:-null}" "${TIMES[smoke-lora]}" "${TIMES[smoke-zero3]}" \
  >"$OUT/timings.json"
log "done: $fails failed check(s); logs in $OUT"
exit $((fails > 0))
