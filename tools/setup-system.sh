#!/usr/bin/env bash
# Install and start what Converge needs from the system: git, the Docker engine, bubblewrap,
# and Chromium with its driver (the review page's browser test).
# Idempotent: a second run only checks. Runs as root (or with sudo available).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v git >/dev/null || need+=(git)
command -v dockerd >/dev/null || need+=(docker.io)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd" >&2
  log="${TMPDIR:-/tmp}/converge-dockerd.log"
  $SUDO sh -c "nohup dockerd >'$log' 2>&1 &"
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then break; fi
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see $log" >&2; exit 1; }
fi
echo "setup: docker engine ready ($(docker version --format '{{.Server.Version}}'))" >&2
