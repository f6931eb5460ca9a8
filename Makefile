# Two set-up commands: `make demo` and `make test`. Each creates and reuses .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do [ -e "$$f" ] || continue; $(PY) "$$f" || exit 1; done

clean:
	rm -rf $(VENV) lightning_logs runs .pytest_cache .ruff_cache
