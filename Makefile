# Two commands set everything up on a fresh machine:
#   make explore   # install into .venv and serve the explorer dashboard (Voila) on 127.0.0.1
#   make test      # install into .venv (with test tools and Chromium) and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: explore explain test install install-test bench clean
# Extra options for `psal dashboard`, e.g. make explore ARGS="--port 8866 --data val/labels.csv"
ARGS ?=

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# Real-browser tests use Debian's Chromium (never a browser downloaded by playwright).
	# apt waits up to 10 minutes for a lock held by another apt process instead of failing.
	command -v chromium >/dev/null || { $(SUDO) apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  $(SUDO) apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium; }
	touch $@

install: $(STAMP)
install-test: $(TEST_STAMP)

explore: $(STAMP)
	$(BIN)/psal dashboard $(ARGS)

explain: $(STAMP)
	$(BIN)/psal explain raw_images/grace_hopper.jpg --out psal_out/grace_hopper

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

bench: $(TEST_STAMP)
	mkdir -p psal_out
	$(BIN)/psal bench kernels --json psal_out/bench-kernels.json
	$(BIN)/psal bench click --json psal_out/bench-click.json
	$(BIN)/psal bench dashboard --json psal_out/bench-dashboard.json
	$(BIN)/psal bench neighbors --json psal_out/bench-neighbors.json

clean:
	rm -rf psal_out .pytest_cache
