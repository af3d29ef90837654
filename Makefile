# The two commands a newcomer needs:  `make run`  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export MAILSYNC_ENV ?= development

.PHONY: install run test lint migrate openapi bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/mailsync migrate

# With no Microsoft or Google client configured: the live demo (simulator, API, worker,
# event publisher, demo mailboxes, the dashboard URL). With one: migrate, then the API on
# $$PORT (8000), one worker and one event publisher (NATS_URL). Ctrl-C stops everything.
run: install
	$(BIN)/mailsync run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy app

test: lint
	$(BIN)/mailsync openapi --check
	$(BIN)/mailsync events schema --check
	$(BIN)/pytest -q

openapi: install
	$(BIN)/mailsync openapi

bench: install
	$(BIN)/python -m bench.upsert
