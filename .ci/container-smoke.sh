#!/usr/bin/env bash
# Container smoke: build the CPU image and run the whole pipeline in a container through compose
# (tiny model, packed LoRA training with checkpoints synced to the objectstore service, merge, eval on 8
# HotpotQA questions), then check FROM THE HOST what landed in the object store; then a broken job spec must
# make the container exit != 0 with the validation message in its logs. Everything is torn down on exit.
#
# Cached between runs on the same machine: the seeded base image (+ its rootfs tarball), the wheelhouse, and
# Docker's layer cache (a source-only change rebuilds one small layer).
# Env: QA_SMOKE_LOG_DIR (default runs/ci/container-smoke), QA_SMOKE_TIMEOUT (seconds for the job, 900).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || PY=python3
LOG_DIR=${QA_SMOKE_LOG_DIR:-$REPO/runs/ci/container-smoke}
TIMEOUT=${QA_SMOKE_TIMEOUT:-900}
mkdir -p "$LOG_DIR"
T0=$SECONDS
declare -A TIMES=()
log() { printf '[container-smoke %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
step() { TIMES[$1]=$2; }

# --- engine, base image, wheels (all idempotent and cached) --------------------------------------------
t=$SECONDS
scripts/start-dockerd.sh
scripts/seed-base-image.sh
scripts/build-wheelhouse.sh "$PY"
step setup $((SECONDS - t))

# --- isolated compose project: own name, own ports, throwaway credentials ---------------------------------
export COMPOSE_PROJECT_NAME="qa-smoke-$$"
export QA_BASE_IMAGE=qa-expert/base:bookworm QA_PIP_OFFLINE=1 QA_JOB=smoke
QA_OBJECTSTORE_PORT_BASE=$("$PY" - <<'PYEOF'
import random, socket
# 8 consecutive free loopback ports (host networking: must not clash with other SeaweedFS servers).
for _ in range(200):
    base = random.randrange(20000, 60000 - 8)
    socks = []
    try:
        for p in range(base, base + 8):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks: s.close()
    print(base); break
else:
    raise SystemExit("no free port block")
PYEOF
)
export QA_OBJECTSTORE_PORT_BASE
AWS_ACCESS_KEY_ID="smoke-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
AWS_SECRET_ACCESS_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export AWS_ENDPOINT_URL="http://127.0.0.1:$QA_OBJECTSTORE_PORT_BASE" AWS_DEFAULT_REGION=us-east-1
COMPOSE=(docker compose --profile cpu)
BAD_CONTAINER="$COMPOSE_PROJECT_NAME-badspec"

FAILURES=()
write_timings() {
  local sep="" k
  {
    printf '{'
    for k in "${!TIMES[@]}"; do printf '%s"%s_s": %s' "$sep" "$k" "${TIMES[$k]}"; sep=", "; done
    printf '%s"total_s": %s}\n' "$sep" "$((SECONDS - T0))"
  } >"$LOG_DIR/timings.json"
}
teardown() {
  code=$?
  write_timings
  "${COMPOSE[@]}" logs --no-color >"$LOG_DIR/compose.log" 2>&1 || true
  docker rm -f "$BAD_CONTAINER" >/dev/null 2>&1 || true
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  log "torn down (logs: $LOG_DIR/compose.log); exit $code"
}
trap teardown EXIT

# --- build -----------------------------------------------------------------------------------------------
t=$SECONDS
log "building images (base $QA_BASE_IMAGE, offline wheels)"
"${COMPOSE[@]}" build objectstore train-cpu >"$LOG_DIR/build.log" 2>&1 || {
  tail -n 40 "$LOG_DIR/build.log" >&2
  log "ERROR: image build failed (full log: $LOG_DIR/build.log)"
  exit 1
}
docker run --rm --network none --entrypoint python qa-expert/train-cpu:latest -m qa_train --help >/dev/null
step build $((SECONDS - t))

# --- the smoke job ---------------------------------------------------------------------------------------
t=$SECONDS
log "starting objectstore (S3 on 127.0.0.1:$QA_OBJECTSTORE_PORT_BASE) and the smoke job"
"${COMPOSE[@]}" up -d --wait objectstore
"${COMPOSE[@]}" up -d train-cpu
cid=$("${COMPOSE[@]}" ps -a -q train-cpu)
[ -n "$cid" ] || { log "ERROR: no train-cpu container"; exit 1; }
timeout "$TIMEOUT" docker logs -f "$cid" 2>&1 | tee "$LOG_DIR/train-cpu.log" || true
if [ "$(docker inspect -f '{{.State.Running}}' "$cid")" = true ]; then
  log "ERROR: smoke job still running after ${TIMEOUT}s"
  exit 1
fi
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$cid")
step job $((SECONDS - t))
if [ "$exit_code" != 0 ]; then
  log "ERROR: the smoke container exited $exit_code"
  exit 1
fi
log "smoke container exited 0"

# --- what the object store holds, checked from the host --------------------------------------------------
# A failure here is recorded and the broken-spec check still runs, so one CI run reports both.
if "$PY" scripts/check_smoke_store.py s3://qa-smoke/runs/smoke --expect_questions 8 >"$LOG_DIR/store.json"; then
  log "object store holds the committed checkpoint, merged model and eval summary ($LOG_DIR/store.json)"
else
  FAILURES+=("object store check (see errors above and $LOG_DIR/store.json)")
fi

# --- a broken job spec: non-zero exit and the validation message in the logs -----------------------------
t=$SECONDS
bad='{"run_name": "bad", "model": {"make_tiny": {}}, "data": {"train_path": "/data/train.json"},
      "training": {"learning_rate": 5, "warmup_stepz": 3}}'
set +e
docker run --name "$BAD_CONTAINER" --network none -e QA_JOB_SPEC="$bad" qa-expert/train-cpu:latest \
  >"$LOG_DIR/badspec.log" 2>&1
bad_code=$?
set -e
cat "$LOG_DIR/badspec.log" >&2
if [ "$bad_code" = 0 ]; then
  log "ERROR: a broken job spec exited 0"
  exit 1
fi
for needle in "invalid job spec" "training.learning_rate" "training.warmup_stepz: unknown key"; do
  grep -qF "$needle" "$LOG_DIR/badspec.log" || { log "ERROR: broken-spec logs lack '$needle'"; exit 1; }
done
step badspec $((SECONDS - t))
log "broken spec: exit $bad_code with the validation message"

write_timings
cat "$LOG_DIR/timings.json" >&2
if [ "${#FAILURES[@]}" -gt 0 ]; then
  for f in "${FAILURES[@]}"; do log "FAILED: $f"; done
  exit 1
fi
log "OK"
