# Two entry points for people: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
APT_PACKAGES := prometheus prometheus-pushgateway

.PHONY: install system-deps demo test lint bench clean

install: $(STAMP)

# Every extra (worker, train, eval) and the dev tools: demo and test need all of them.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

# Real Prometheus and Pushgateway servers for the monitoring tests (started by the tests).
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
	    || ! command -v prometheus-pushgateway >/dev/null; then \
	  echo "installing $(APT_PACKAGES) (Debian packages)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    $(APT_PACKAGES) >/dev/null; \
	fi

demo: install
	$(BIN)/vaegen pipeline --config configs/digits.toml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install system-deps lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/train.py
	$(BIN)/python bench/decoder.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/eval.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
