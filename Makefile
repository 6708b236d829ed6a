# Everything a fresh clone needs: `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint typecheck run bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# `make demo TRANSPORT=audiosocket|websocket`: the same call over another transport;
# `make demo SCENARIO=transfer`: a bot hands the caller to a person (and the call is recorded).
demo: $(STAMP)
	$(BIN)/python -m bridge.tools.demo $(if $(TRANSPORT),--transport $(TRANSPORT)) $(if $(SCENARIO),--scenario $(SCENARIO))

# The bridge against a naive relay under the same load (a few minutes; `--quick`: ~30 s).
# `make bench TRANSPORT=audiosocket|websocket`: the bridge alone over that transport.
bench: $(STAMP)
	$(BIN)/python -m bridge.tools.bench $(if $(TRANSPORT),--transport $(TRANSPORT)) $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-all: $(STAMP)
	$(BIN)/pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check ari rtp bridge || true

typecheck: $(STAMP)
	$(BIN)/mypy ari rtp bridge

run: $(STAMP)
	$(BIN)/pipecat-bridge run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis demo-out
