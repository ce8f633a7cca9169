# NovaCron Quota Stream — developer commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install fmt lint typecheck test test-unit tools browser screenshots demo up down topics clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install the project with its dev tools

fmt: $(STAMP) ## format the code (ruff)
	$(VENV)/bin/ruff format schemas streams projections ops tests novaquota/*.py
	$(VENV)/bin/ruff check --fix schemas streams projections ops tests novaquota/*.py

lint: $(STAMP) ## lint (ruff)
	$(VENV)/bin/ruff check schemas streams projections ops tests novaquota/*.py
	$(VENV)/bin/ruff format --check schemas streams projections ops tests novaquota/*.py

typecheck: $(STAMP) ## type-check (mypy)
	$(VENV)/bin/mypy

test: $(STAMP) tools browser ## the whole test suite; starts the local broker if none answers
	$(PY) -m pytest $(PYTEST_ARGS)

CHROMIUM ?= /usr/bin/chromium
browser: ## Debian's chromium for the dashboard tests (apt-get; Playwright drives it, no download)
	@test -x $(CHROMIUM) || { \
	  echo "installing chromium (apt-get) ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@test -x $(CHROMIUM)

screenshots: $(STAMP) browser ## the dashboard tests, saving each page's screenshot into docs/img/
	NOVAQUOTA_UI_SCREENSHOTS=docs/img $(PY) -m pytest tests/integration/test_dashboard.py $(PYTEST_ARGS)

tools: ## promtool and kustomize for the alert-rule and manifest tests (built once with Go; fetches Go if missing)
	@bash ops/tools/promtool.sh >/dev/null
	@bash ops/tools/kustomize.sh >/dev/null

test-unit: $(STAMP) ## the pure unit tests only (no broker)
	$(PY) -m pytest -p no:cacheprovider -m "not integration" $(PYTEST_ARGS)

demo: $(STAMP) ## the main job: broker, topics, worker and a live workload (DURATION=seconds)
	$(VENV)/bin/novaquota demo $(if $(DURATION),--duration $(DURATION))

up: $(STAMP) ## start the local Kafka broker and create the topics
	$(VENV)/bin/novaquota kafka start
	$(VENV)/bin/novaquota topics create

down: $(STAMP) ## stop the local Kafka broker
	$(VENV)/bin/novaquota kafka stop

clean: ## remove the virtualenv and local state
	rm -rf $(VENV) var .mypy_cache .ruff_cache
