# The two commands a newcomer types (see README.md):
#   make demo   -- install and run the main job
#   make test   -- install and run lint and the whole test suite
PY := $(if $(VIRTUAL_ENV),python,.venv/bin/python)

.PHONY: demo test lint bench

demo:
	bash scripts/setup.sh plot,data
	$(PY) -m bayesdrop.cli demo

test:
	bash scripts/setup.sh test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

bench:
	bash scripts/setup.sh
	$(PY) benchmarks/run_all.py
