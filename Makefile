# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv and installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,tuning,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m afa demo

test: $(STAMP)
	$(BIN)/python -m pytest -q afa tests

lint: $(STAMP)
	$(BIN)/ruff check afa tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.epoch_time

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
