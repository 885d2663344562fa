# The two set-up commands: `make demo` and `make test` create .venv when missing.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedcredit-installed

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_HOME := $(CURDIR)/var/flwr
export RAY_USAGE_STATS_ENABLED := 0
# The UCI Taiwan credit files (FATE's copies), for the tests and benchmarks that use them.
export FEDCREDIT_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data/fate)

.PHONY: install demo test deployment-test lint quality clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, exact pin: a looser one pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/fedcredit demo

# two workers, one test file each at a time: module-scoped runs stay shared within their file
test: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile

# the coordinator and its institutions in Linux network namespaces, over TLS (root; minutes)
deployment-test: $(STAMP)
	$(BIN)/pytest -q -m deployment tests/deployment

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py --json var/quality.json

clean:
	rm -rf var
