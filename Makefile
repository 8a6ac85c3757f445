# tailtune: `make run` starts everything locally, `make test` runs the whole suite.
# Both create .venv and install tailtune into it first (again whenever pyproject.toml changes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: run test bench reliability lint install data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist package (needs root; skipped otherwise:
# the fashion-mnist tests then say what is missing).
data:
	@if [ ! -f $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	fi

run: install data
	$(BIN)/tailtune up

test: install data
	$(BIN)/python -m pytest -q

bench: install data
	$(BIN)/tailtune bench losses --out bench-losses.md
	$(BIN)/tailtune bench training --out bench-training.md
	$(BIN)/tailtune bench service --out bench-service.md

reliability: install
	$(BIN)/tailtune bench service --out bench-service.md

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) tailtune.db tailtune.db-wal tailtune.db-shm artifacts .pytest_cache
