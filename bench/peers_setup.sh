#!/usr/bin/env bash
# Installs the peers bench/bench_peers_ops.py compares artfs with, when they
# are missing: rclone from Debian's packages, and dvc 3.67 in a venv of its
# own (so its dependencies never meet artfs's .venv). Idempotent: what is
# there already is left alone. Runs apt-get and pip as root or with sudo. Not run by
# CI or `make test`.
#
#   bash bench/peers_setup.sh
#   ARTFS_BENCH_DVC_VENV=/elsewhere bash bench/peers_setup.sh   # then set ARTFS_BENCH_DVC
set -euo pipefail

dvc_venv="${ARTFS_BENCH_DVC_VENV:-/opt/artfs-bench/dvc}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if command -v rclone >/dev/null; then
    echo "rclone: already installed ($(rclone version | head -1))"
else
    echo "rclone: installing with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rclone >/dev/null
    echo "rclone: installed ($(rclone version | head -1))"
fi

if [ -x "$dvc_venv/bin/dvc" ]; then
    echo "dvc: already in $dvc_venv ($("$dvc_venv/bin/dvc" --version))"
else
    echo "dvc: installing dvc 3.67 into the venv $dvc_venv"
    $SUDO python3 -m venv "$dvc_venv"
    $SUDO "$dvc_venv/bin/pip" install -q 'dvc==3.67.*'
    echo "dvc: installed ($("$dvc_venv/bin/dvc" --version))"
fi
if [ "$dvc_venv" != /opt/artfs-bench/dvc ]; then
    echo "dvc: set ARTFS_BENCH_DVC=$dvc_venv/bin/dvc for bench_peers_ops to find it"
fi
