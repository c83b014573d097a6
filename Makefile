# Two commands on a fresh machine:  `make test`  and  `make repro`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# No model hub is reachable here; fail at once instead of retrying for ~47 s.
export HF_HUB_OFFLINE := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install test lint repro clean

# pip takes torch/torchvision from this machine's disk (pinned in pyproject.toml), so the
# install does not download a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q -n auto --dist loadfile --no-loadscope-reorder

repro: install
	$(BIN)/dvc repro

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
