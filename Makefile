# crm2calls: `make run` serves locally, `make test` is everything CI checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run install-dev test lint audit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.runtime $@

install-dev: $(VENV)/.dev

run: $(VENV)/.runtime
	HOST=$(HOST) PORT=$(PORT) $(BIN)/flask --app app serve --dev

lint: $(VENV)/.dev
	$(BIN)/ruff check .

# A dependency audit where its database can be reached; a network failure is not a finding.
audit: $(VENV)/.dev
	scripts/audit.sh

test: lint audit
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache

include mk/package.mk
