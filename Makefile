# The two commands a newcomer types (see README.md):
#   make reproduce  -- install, fetch the offline data, run the main job (bayesdrop-reproduce --quick)
#   make test       -- install, then run lint, type checks, the whole test suite and the docs build
PY := $(if $(VIRTUAL_ENV),python,.venv/bin/python)
BIN := $(if $(VIRTUAL_ENV),,.venv/bin/)

.PHONY: reproduce demo test lint typecheck docs bench

# The reproduction suite is an application beside the library (reproduce/, not in the wheel):
# installed in editable mode after the library, with its own dependencies.
INSTALL_REPRODUCE := py=$(PY) bash -c '. scripts/pip-install.sh && pip_install "[setup]" -e reproduce'

reproduce:
	bash scripts/setup.sh plot
	$(INSTALL_REPRODUCE)
	bash scripts/get-data.sh
	$(BIN)bayesdrop-reproduce --quick --out reproduce-out

demo:
	bash scripts/setup.sh plot
	$(INSTALL_REPRODUCE)
	$(BIN)bayesdrop-demo

test:
	bash scripts/setup.sh test
	$(INSTALL_REPRODUCE)
	bash scripts/get-data.sh pypi
	$(MAKE) lint typecheck
	$(PY) -m pytest
	$(MAKE) docs

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy src/bayesdrop reproduce/bayesdrop_reproduce

docs:
	$(PY) -m sphinx -E -n -W -q -b html docs docs/_build/html

bench:
	bash scripts/setup.sh
	$(INSTALL_REPRODUCE)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
