# Two commands: `make run` trains the whole pipeline, `make test` runs the tests.
# Both create .venv and install the pinned dependencies first (once).
# For a CUDA build of torch: make run TORCH_SPEC="torch==2.11.0" PIP_ARGS="--index-url <your wheel index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_ARGS ?=
CHAT_PROMPT ?= What is 2 plus 3?
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1

.PHONY: run test lint format clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

# The plots page's template: Vega's scripts from the installed vl-convert-python, inlined so
# that `dvc plots show` and `dvc plots diff` render with no network (.dvc/config names it).
.dvc/plots.html: $(BIN)/.installed
	$(BIN)/python -m xinslm.plots_page $@

run: $(BIN)/.installed .dvc/plots.html
	PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@echo; echo "user> $(CHAT_PROMPT)"; printf "assistant> "
	@$(BIN)/xinslm chat -p "$(CHAT_PROMPT)" --temperature 0 --max-new-tokens 64

test: $(BIN)/.installed .dvc/plots.html
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf data/tokens data/token-store data/blocks data/chat checkpoints/*.pt dvclive
