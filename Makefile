# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install vfnn into it.  torch is pinned to the CPU build first so that no
# later requirement can pull a CUDA build (override TORCH=... on a GPU machine).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

$(BIN)/vfnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev,demo,marabou]"
	touch $(BIN)/vfnn

install: $(BIN)/vfnn

demo: $(BIN)/vfnn
	$(BIN)/vfnn demo --out demo-out

test: $(BIN)/vfnn
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

.PHONY: install demo test
