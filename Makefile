# flag-scheduler developer commands. Everything installs into .venv from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run invoke install test lint typecheck pytest lock clean

# The main job on a throwaway embedded PostgreSQL: the real handler under a simulated clock.
run: $(STAMP)
	$(BIN)/flag-scheduler demo

# One real invocation against DATABASE_URL, or the embedded server kept in .flag-scheduler/.
invoke: $(STAMP)
	$(BIN)/flag-scheduler invoke --event events/scheduled-event.json

# Lint, type-check and the whole test suite (a real PostgreSQL; embedded unless DATABASE_URL).
test: lint typecheck pytest

pytest: $(STAMP)
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

install: $(STAMP)

$(STAMP): requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "flag-scheduler needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Re-resolve the pins (dev lock for every supported Python; runtime-only pins for Lambda).
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --quiet -o requirements-dev.lock
	$(BIN)/uv pip compile pyproject.toml --python-version 3.13 \
		--python-platform aarch64-manylinux_2_28 --generate-hashes --quiet \
		-o handler/requirements.txt

clean:
	rm -rf $(VENV) .flag-scheduler .mypy_cache .ruff_cache .pytest_cache
