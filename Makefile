# The two commands a newcomer needs: `make demo` and `make test`.
# Each installs what it needs: Debian packages (as root, via
# scripts/install-system-deps) and a virtualenv in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: test demo bench lint format install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = 0 ]; then scripts/install-system-deps; \
	 else echo "make: not root, skipping scripts/install-system-deps (run it as root once)"; fi
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[device,backend,sim,postgres,test]'
	@touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/hark demo

bench: $(STAMP)
	$(BIN)/python -m bench

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
