# The two commands a newcomer needs: `make test` and `make demo`. Both start with `make setup`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean lint

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/pytest -q tests

demo: setup
	$(BIN)/python bench/demo.py

bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/pip install -q ruff mypy
	$(BIN)/ruff check supervisord children proto
	$(BIN)/mypy --strict proto supervisord/pool.py supervisord/scheduler.py supervisord/traceids.py supervisord/validate.py supervisord/taskenv.py supervisord/metrics.py supervisord/config.py

clean:
	rm -rf $(VENV) build *.egg-info
