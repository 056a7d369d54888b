# trialfed developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch by default; override for a GPU build, e.g.
#   make setup TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
DEMO_DIR ?= demo
export FLWR_TELEMETRY_ENABLED = 0
export FLWR_DISABLE_UPDATE_CHECK = 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export RAY_USAGE_STATS_ENABLED = 0
export MPLBACKEND = Agg

.PHONY: setup demo test test-fast lint typecheck unit bench bench-smoke ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# Both demo trials, each reported in English, Japanese and Korean (report.html, report.ja.html,
# report.ko.html in $(DEMO_DIR)/<design>/results); `trialfed ui` shows the MLflow runs.
DEMO_LANG ?= en,ja,ko

demo: setup
	@for design in vaccine drug; do \
	  $(BIN)/trialfed synth --out $(DEMO_DIR)/$$design --design $$design --seed 20261128 || exit 1; \
	  echo "What the $$design plan would take from one site (trialfed site approve --dry-run):"; \
	  $(BIN)/trialfed site approve $(DEMO_DIR)/$$design/sites/JP01 \
	    experiments/plans/demo_$$design.toml --dry-run || exit 1; \
	  for d in $(DEMO_DIR)/$$design/sites/*/; do \
	    $(BIN)/trialfed site check $$d --quiet || exit 1; \
	    $(BIN)/trialfed site approve $$d experiments/plans/demo_$$design.toml --quiet || exit 1; \
	  done; \
	  $(BIN)/trialfed run experiments/plans/demo_$$design.toml --sites $(DEMO_DIR)/$$design/sites/* \
	    --out $(DEMO_DIR)/$$design/results --lang $(DEMO_LANG) || exit 1; \
	done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest

# Lint, types and every test; prints the total time at the end.
test: setup
	@start=$$(date +%s); $(MAKE) --no-print-directory lint typecheck unit; status=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s"; exit $$status

# The inner loop: tests not marked slow (no Flower engine, Ray, processes, browser), no lint.
test-fast: setup
	@start=$$(date +%s); $(BIN)/python -m pytest -q -m "not slow"; status=$$?; \
	echo "make test-fast: $$(( $$(date +%s) - start )) s"; exit $$status

bench: setup
	$(BIN)/python -m benchmarks.run

bench-smoke: setup
	$(BIN)/python -m benchmarks.run --smoke

ui: setup
	$(BIN)/trialfed ui

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
