# dbmazz — every target works from a fresh clone: `install` runs first where needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-slow demo lint proto bench clean

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
