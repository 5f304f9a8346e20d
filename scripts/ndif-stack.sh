#!/usr/bin/env bash
# A real NDIF stack (ndif 0.1.2 + nnsight 0.8.1) on 127.0.0.1 only, for hooks_mm's `ndif` tests.
#
#   scripts/ndif-stack.sh install   # its own venv (.ndif-venv/) and Debian's redis-server
#   scripts/ndif-stack.sh up        # install if needed, start everything, deploy tiny models
#   scripts/ndif-stack.sh down      # stop every process it started (PID + start time, groups, namespace); idempotent
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

# ndif 0.1.2 declares Requires-Python >= 3.12. The venv is made with $NDIF_PYTHON when set; otherwise
# with python3, and ndif is installed with --ignore-requires-python (tested: ndif 0.1.2 runs on 3.11.7,
# the interpreter this project's machines have on PATH; Debian 12 ships no 3.12). A 3.12+ venv also needs
# a torch wheel for it: the default pin below is the CPU build found in the local wheel dir (cp311 only).
pick_python() {
  if [ -n "${NDIF_PYTHON:-}" ]; then echo "$NDIF_PYTHON"; else command -v python3; fi
}

python_note() {  # say plainly which interpreter the stack runs on when it is older than ndif asks
  "$1" - <<'PYEOF'
import glob, os, shutil, sys
if sys.version_info < (3, 12):
    found = [p for p in [shutil.which("python3.13"), shutil.which("python3.12")] if p]
    found += sorted(glob.glob(os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv")) + "/versions/3.1[2-9]*/bin/python3"))
    hint = f" (3.12+ interpreters here: {', '.join(found)})" if found else " (none newer found on PATH or in pyenv)"
    print(f"note: ndif 0.1.2 requires Python >= 3.12; this stack runs it on {sys.version.split()[0]}, installed with "
          f"--ignore-requires-python. Set NDIF_PYTHON (and NDIF_TORCH) to build its venv with 3.12+{hint}.",
          file=sys.stderr)
PYEOF
}

install() {
  if ! command -v redis-server >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
  fi
  if [ ! -f "$VENV/.installed" ]; then
    test -x "$PY" || "$(pick_python)" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "${NDIF_TORCH:-torch==2.13.0}"   # first, so nothing pulls another torch build
    "$PY" -m pip install -q --prefer-binary --ignore-requires-python "ndif[api,ray]==0.1.2" nnsight==0.8.1 \
      transformers==5.23.0 numpy==2.4.6 accelerate "moto[server]" pillow
    touch "$VENV/.installed"
  fi
  python_note "$PY"
}

case "${1:-}" in
  install) install ;;
  up) install; exec "$PY" scripts/ndif_stack.py up ;;
  down) exec "$PY" scripts/ndif_stack.py down ;;
  status|api-stop|api-start) exec "$PY" scripts/ndif_stack.py "$1" ;;
  *) echo "usage: $0 install|up|down|status|api-stop|api-start" >&2; exit 2 ;;
esac
