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

# Migrate, then the API on :8000, one worker and one event publisher (NATS_URL); Ctrl-C
# stops them all.
run: migrate
	@trap 'kill 0' INT TERM EXIT; \
	$(BIN)/mailsync worker & \
	$(BIN)/mailsync publisher & \
	$(BIN)/mailsync api --host 0.0.0.0 --port 8000

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
