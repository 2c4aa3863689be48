#!/usr/bin/env bash
# A local image registry (Debian's `docker-registry`, the CNCF distribution server) on a free loopback port.
# Prints `127.0.0.1:PORT` on stdout; everything else goes to stderr. Idempotent: a registry this script started
# earlier with the same REGISTRY_STATE dir that still answers is reused, and its address printed again.
#
# Why: a cloud host pulls its image from a registry. Tests and CI stand in for one with this server; Docker
# allows plain http to registries on 127.0.0.0/8 without any daemon setting, so no TLS is needed.
#
# Env:
#   REGISTRY_STATE     dir for config, storage, pid, address and log (default /tmp/qa-expert-registry)
#   REGISTRY_PORT      port to bind (default: a free one)
#   REGISTRY_HTPASSWD  htpasswd file (bcrypt entries, `htpasswd -Bbn USER PASS`): basic auth on every request
#   REGISTRY_TOKEN_REALM, REGISTRY_TOKEN_SERVICE, REGISTRY_TOKEN_ISSUER, REGISTRY_TOKEN_CERT
#                      token auth instead (Docker Hub's and GHCR's scheme): clients get a JWT from the realm,
#                      signed by the key of the PEM certificate REGISTRY_TOKEN_CERT
#   REGISTRY_WAIT      seconds to wait until /v2/ answers (default 30)
# `start-registry.sh --install` only installs the packages. Stop a registry: kill "$(cat "$REGISTRY_STATE/pid")"
set -euo pipefail

log() { printf '[start-registry] %s\n' "$*" >&2; }

STATE=${REGISTRY_STATE:-/tmp/qa-expert-registry}
WAIT=${REGISTRY_WAIT:-30}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# 1. The server binary (and htpasswd, which the authenticated test registry needs), from the machine's apt sources.
if ! command -v docker-registry >/dev/null 2>&1 || ! command -v htpasswd >/dev/null 2>&1; then
  log "installing docker-registry + apache2-utils from apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    docker-registry apache2-utils >/dev/null
fi
if [ "${1:-}" = "--install" ]; then exit 0; fi

answers() {  # $1 = host:port; any HTTP answer on /v2/ (200, or 401 with auth) means the server is up
  python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}/v2/", timeout=2)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 401 else 1)
except Exception:
    sys.exit(1)
EOF
}

# 2. Already running from an earlier call?
mkdir -p "$STATE"
if [ -f "$STATE/pid" ] && [ -f "$STATE/address" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null \
  && answers "$(cat "$STATE/address")"; then
  log "reusing registry pid $(cat "$STATE/pid")"
  cat "$STATE/address"
  exit 0
fi

# 3. Config: loopback only, storage in the state dir, deletes allowed, optional htpasswd auth.
PORT=${REGISTRY_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
ADDR="127.0.0.1:$PORT"
mkdir -p "$STATE/data"
{
  echo "version: 0.1"
  echo "log: {level: warn, accesslog: {disabled: true}}"
  echo "storage:"
  echo "  filesystem: {rootdirectory: $STATE/data}"
  echo "  delete: {enabled: true}"
  echo "http:"
  echo "  addr: $ADDR"
  echo "  secret: $(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  if [ -n "${REGISTRY_HTPASSWD:-}" ]; then
    echo "auth:"
    echo "  htpasswd: {realm: qa-expert-registry, path: $(readlink -f "$REGISTRY_HTPASSWD")}"
  elif [ -n "${REGISTRY_TOKEN_REALM:-}" ]; then
    echo "auth:"
    echo "  token: {realm: \"$REGISTRY_TOKEN_REALM\", service: \"$REGISTRY_TOKEN_SERVICE\", issuer: \"$REGISTRY_TOKEN_ISSUER\", rootcertbundle: $(readlink -f "$REGISTRY_TOKEN_CERT")}"
  fi
} >"$STATE/config.yml"

# 4. Start detached (own session: it outlives this script), wait until /v2/ answers. The server reads every
# REGISTRY_* variable as a config override, so none of ours (nor REGISTRY_PASSWORD) reaches it.
unset_ours=()
for v in $(compgen -e | grep '^REGISTRY_' || true); do unset_ours+=(-u "$v"); done
setsid nohup env "${unset_ours[@]}" docker-registry serve "$STATE/config.yml" >>"$STATE/registry.log" 2>&1 </dev/null &
echo $! >"$STATE/pid"
for _ in $(seq 1 $((WAIT * 4))); do
  if answers "$ADDR"; then
    echo "$ADDR" >"$STATE/address"
    log "registry ready at $ADDR (pid $(cat "$STATE/pid"), storage $STATE/data)"
    echo "$ADDR"
    exit 0
  fi
  if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then break; fi
  sleep 0.25
done
log "ERROR: registry did not answer on $ADDR; log tail:"
tail -n 20 "$STATE/registry.log" >&2 || true
kill "$(cat "$STATE/pid")" 2>/dev/null || true
exit 1
