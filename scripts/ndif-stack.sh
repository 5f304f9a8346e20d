#!/usr/bin/env bash
# A real NDIF stack (ndif 0.1.2 + nnsight 0.8.1) on 127.0.0.1 only, for hooks_mm's `ndif` tests.
#
#   scripts/ndif-stack.sh install   # its own venv (.ndif-venv/) and Debian's redis-server
#   scripts/ndif-stack.sh up        # install if needed, start everything, deploy tiny models
#   scripts/ndif-stack.sh down      # stop every process it started, by PID
#   scripts/ndif-stack.sh status
#   scripts/ndif-stack.sh api-stop|api-start   # stop / restart only the API (fault tests)
#
# Never binds 0.0.0.0 and never runs `ndif start`. Everything lives in $NDIF_STATE
# (default .ndif-state/): PIDs, logs, Ray's temp dir, the saved tiny models, models.yaml.
# The Python side is scripts/ndif_stack.py (start, deploy, stop) and scripts/ndif_actor.py (a CPU
# model actor). The tiny models are built by hooks_mm's own venv ($HOOKS_MM_PYTHON, default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${NDIF_VENV:-$ROOT/.ndif-venv}
export NDIF_STATE=${NDIF_STATE:-$ROOT/.ndif-state}
PY=$VENV/bin/python

install() {
  if ! command -v redis-server >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
  fi
  if [ ! -f "$VENV/.installed" ]; then
    test -x "$PY" || python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "${NDIF_TORCH:-torch==2.13.0}"   # first, so nothing pulls another torch build
    "$PY" -m pip install -q --prefer-binary --ignore-requires-python "ndif[api,ray]==0.1.2" nnsight==0.8.1 \
      transformers==5.23.0 numpy==2.4.6 accelerate "moto[server]" pillow
    touch "$VENV/.installed"
  fi
}

case "${1:-}" in
  install) install ;;
  up) install; exec "$PY" scripts/ndif_stack.py up ;;
  down) exec "$PY" scripts/ndif_stack.py down ;;
  status|api-stop|api-start) exec "$PY" scripts/ndif_stack.py "$1" ;;
  *) echo "usage: $0 install|up|down|status|api-stop|api-start" >&2; exit 2 ;;
esac
