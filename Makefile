# The two commands a newcomer needs: `make test` and `make demo`. Both start with `make setup`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean lint lock bytecode

setup: $(STAMP) bytecode

# Every child worker's start imports supd's own modules: compiled once here, so that a
# PYTHONDONTWRITEBYTECODE environment (CI, some containers) does not make each start
# compile them from source again (quick when nothing changed).
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q children proto supervisord

# The venv holds exactly what requirements.lock pins (with hashes), then supd itself.
$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps --config-settings editable_mode=compat -e .
	touch $(STAMP)

# Re-resolve the pins from pyproject.toml (newest versions that fit), with their hashes.
lock:
	$(PY) -m venv .lockenv && .lockenv/bin/pip install -q pip-tools
	.lockenv/bin/pip-compile -q --generate-hashes --allow-unsafe --extra test --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml
	rm -rf .lockenv

test: setup
	@test -x /usr/bin/chromium || echo "NOTE: no /usr/bin/chromium: the dashboard's browser tests (tests/browser) are SKIPPED; apt-get install -y chromium to run them"
	$(BIN)/pytest -q tests

demo: setup
	$(BIN)/python bench/demo.py

bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/pip install -q ruff mypy
	$(BIN)/ruff check supervisord children proto
	$(BIN)/lint-imports
	$(BIN)/mypy --strict proto supervisord/core supervisord/store supervisord/config.py

clean:
	rm -rf $(VENV) build *.egg-info
