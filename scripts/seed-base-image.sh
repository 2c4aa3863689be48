#!/usr/bin/env bash
# Seed the local base image `qa-expert/base:bookworm` (idempotent).
#
# Why: Docker Hub is unreachable from these machines, so `FROM python:3.11-slim` cannot be pulled. We build an
# equivalent minimal Debian bookworm root filesystem with debootstrap (python3 3.11, venv, pip, CA certs) and
# `docker import` it. The Dockerfiles stay standard and take the tag through `--build-arg BASE_IMAGE=...`.
# The rootfs tarball is cached so later runs on the same machine skip debootstrap (~75 s) entirely.
#
# Env:
#   BASE_IMAGE_TAG   image tag to create (default qa-expert/base:bookworm)
#   QA_CACHE_DIR     cache dir for the rootfs tarball (default /var/cache/qa-expert, else $XDG_CACHE_HOME/qa-expert)
#   DEBIAN_MIRROR    debootstrap mirror (default http://deb.debian.org/debian)
#   FORCE_RESEED=1   rebuild the image (and the tarball) even when they exist
set -euo pipefail

log() { printf '[seed-base-image] %s\n' "$*" >&2; }

TAG=${BASE_IMAGE_TAG:-qa-expert/base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
HOST_CA=/etc/ssl/certs/ca-certificates.crt
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if [ -z "${QA_CACHE_DIR:-}" ]; then
  if mkdir -p /var/cache/qa-expert 2>/dev/null && [ -w /var/cache/qa-expert ]; then
    QA_CACHE_DIR=/var/cache/qa-expert
  else
    QA_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/qa-expert"
  fi
fi
mkdir -p "$QA_CACHE_DIR"
# The cache key names everything that changes the rootfs content.
key=$(printf '%s|%s|%s' "$SUITE" "$PACKAGES" "$(uname -m)" | sha256sum | cut -c1-12)
TARBALL="$QA_CACHE_DIR/rootfs-$SUITE-$key.tar"

if [ "${FORCE_RESEED:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  log "image $TAG already present: nothing to do"
  exit 0
fi

if [ "${FORCE_RESEED:-0}" = 1 ] || [ ! -s "$TARBALL" ]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap from apt"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  work=$(mktemp -d "$QA_CACHE_DIR/rootfs.XXXXXX")
  trap '$SUDO rm -rf "$work"' EXIT
  log "debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR; takes about a minute"
  $SUDO debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || {
    log "ERROR: debootstrap failed; last log lines:"
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
  }
  # pip inside containers reaches the registry only through the host's CA bundle (TLS-inspecting proxy).
  if [ -s "$HOST_CA" ]; then
    $SUDO cp "$HOST_CA" "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  # Trim what a container never needs (apt lists, caches, docs) to keep the image small.
  $SUDO rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
    "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/usr/share/doc/"* "$work/rootfs/usr/share/man/"*
  # Write to a temp name then rename, so an interrupted run never leaves a truncated tarball that looks valid.
  $SUDO tar -C "$work/rootfs" --numeric-owner -cf "$TARBALL.partial" .
  $SUDO mv "$TARBALL.partial" "$TARBALL"
  log "cached rootfs: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
else
  log "reusing cached rootfs $TARBALL"
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["/bin/bash"]' \
  "$TARBALL" "$TAG" >/dev/null
docker run --rm --network none "$TAG" python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)'
log "image $TAG ready ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
