# flag-scheduler developer commands. Everything installs into .venv from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run invoke serve install test lint typecheck pytest lock bench clean rds-ca-bundle openapi

# The main job on a throwaway embedded PostgreSQL: the real handler under a simulated clock.
run: $(STAMP)
	$(BIN)/flag-scheduler demo

# One real invocation against DATABASE_URL, or the embedded server kept in the per-user data
# folder (~/.local/share/flag-scheduler/pgdata; FLAG_SCHEDULER_DATA_DIR to move it).
invoke: $(STAMP)
	$(BIN)/flag-scheduler invoke --event events/scheduled-event.json

# The HTTP API on http://127.0.0.1:8080, on the same database as invoke. Requests pass only with
# `Authorization: Bearer $FLAG_SCHEDULER_DEV_TOKEN` (set the variable first; README "HTTP API").
serve: $(STAMP)
	$(BIN)/flag-scheduler serve

# Lint, type-check and the whole test suite (a real PostgreSQL; embedded unless DATABASE_URL).
test: lint typecheck check-template pytest

pytest: $(STAMP)
	$(BIN)/pytest -n 2 -m "not soak" $(PYTEST_ARGS)

# The long runs: 100,000 schedules under random faults drained by 4 invokers (prints the
# report line), and the model-based test at length.
soak: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider -m soak -s tests/system

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

# uv.lock (from pyproject.toml's dependencies, cli extra and dependency groups) is the one
# source of pins; the three requirement files are exported from it, with hashes, so the dev
# lock, the scheduler's Lambda pins and the migration function's cannot drift apart
# (tests/project/test_locks.py checks). `make lock` keeps locked versions; UV_LOCK_ARGS=--upgrade
# re-resolves them.
UV_EXPORT := $(BIN)/uv export --frozen --no-emit-project --format requirements-txt --quiet
lock: $(STAMP)
	$(BIN)/uv lock $(UV_LOCK_ARGS)
	$(UV_EXPORT) --extra cli --group dev -o requirements-dev.lock
	$(UV_EXPORT) --no-default-groups -o handler/requirements.txt
	$(UV_EXPORT) --no-default-groups --group migration -o migration-function/requirements.txt

# The benchmark (not part of test): the handler draining a backlog against the SQL floor, and
# the HTTP API's requests/s and p50/p99 latency through the in-process resolver (one client).
# Prints Markdown tables; figures also go to bench-results/latest.json. Takes a few minutes.
bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# Rebuild the shipped CA bundle from a downloaded global-bundle.pem (README: TLS to the database).
rds-ca-bundle: $(STAMP)
	$(BIN)/python scripts/rds_ca_bundle.py $(GLOBAL_BUNDLE) $(if $(AMAZON_ROOTS),--amazon-roots $(AMAZON_ROOTS))

# Regenerate docs/openapi.json from the API's routes and models (a test fails while stale).
openapi: $(STAMP)
	$(BIN)/python scripts/openapi.py

# The embedded database is not here (it lives in the per-user data folder): clean keeps it.
clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# --- AWS template checks (tools in their own venv: their pins conflict with the app's) -----
TOOLS_VENV := .venv-tools
TOOLS_BIN := $(TOOLS_VENV)/bin
TOOLS_STAMP := $(TOOLS_VENV)/.installed
# Validation and builds are offline, but the SAM CLI still wants a region.
AWS_ENV := AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-eu-west-1} SAM_CLI_TELEMETRY=0
# The deployable build (arm64) is checked for the right wheels; a second build for this
# machine's architecture, from the same template and requirements, is imported and run.
HOST_ARCH := $(shell uname -m | sed -e 's/aarch64/arm64/' -e 's/amd64/x86_64/')
# Built from its own working folder: SAM keeps dependencies in ./.aws-sam/deps and each build
# deletes the folders the other's cache points to, so sharing one would never hit the cache.
HOST_WORK := .aws-sam/host-$(HOST_ARCH)
HOST_BUILD := $(HOST_WORK)/build

.PHONY: tools check-template lock-aws

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): tools-requirements.lock
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_BIN)/python -m pip install --quiet --require-hashes --no-deps -r tools-requirements.lock
	touch $@

# sam validate --lint, cfn-lint (+ serverless rules), checkov, sam build, then the built
# functions run against a real PostgreSQL (tests/aws/test_built_functions.py). Its own
# --basetemp: pytest prunes all but the newest 3 shared temp folders, and would delete a
# concurrent run's embedded server from under it.
check-template: $(STAMP) $(TOOLS_STAMP)
	@python313="$$(scripts/find-python3.13)" || exit 1; \
	set -ex; \
	export PATH="$$(dirname "$$python313"):$$PATH" $(AWS_ENV); \
	$(TOOLS_BIN)/sam validate --lint; \
	$(TOOLS_BIN)/cfn-lint template.yaml; \
	$(TOOLS_BIN)/checkov -f template.yaml --framework cloudformation --skip-download --compact --quiet; \
	$(TOOLS_BIN)/sam build --cached; \
	if [ "$(HOST_ARCH)" != arm64 ]; then \
		mkdir -p $(HOST_WORK); \
		(cd $(HOST_WORK) && $(CURDIR)/$(TOOLS_BIN)/sam build -t $(CURDIR)/template.yaml --cached \
			--build-dir build --cache-dir cache --parameter-overrides Architecture=$(HOST_ARCH)); \
	fi; \
	FLAG_SCHEDULER_BUILD_DIR=.aws-sam/build \
	FLAG_SCHEDULER_HOST_BUILD_DIR=$(if $(filter arm64,$(HOST_ARCH)),.aws-sam/build,$(HOST_BUILD)) \
	FLAG_SCHEDULER_BUILD_PYTHON="$$python313" \
		$(BIN)/pytest -p no:cacheprovider --basetemp=.aws-sam/pytest tests/aws/test_built_functions.py

# Re-resolve the template tools' lock (their own venv: their pins conflict with the app's;
# the migration function's pins come from uv.lock, see lock).
lock-aws: $(STAMP)
	$(BIN)/uv pip compile tools-requirements.in --universal --python-version 3.11 \
		--generate-hashes --quiet -o tools-requirements.lock
