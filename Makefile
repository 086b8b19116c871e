# The two commands a newcomer needs: `make demo` and `make test`.
# Each installs what it needs: Debian packages (as root, via
# scripts/install-system-deps) and a virtualenv in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: test demo bench lint format install clean system-test wheel

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = 0 ]; then scripts/install-system-deps; \
	 else echo "make: not root, skipping scripts/install-system-deps (run it as root once)"; fi
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[device,backend,sim,postgres,webrtc,wake,test]'
	@touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/hark demo

# hark on arm64 Raspberry Pi OS-like roots and under a real systemd (system/README.md).
# Needs root; caches in $${HARK_SYSTEM_CACHE:-/var/cache/hark-system}.
system-test: $(STAMP)
	system/run

# dist/hark_voice-*.whl from a clean copy of this checkout's files (no stale build/lib).
wheel: $(STAMP)
	@rm -rf dist && tmp=$$(mktemp -d) && \
	 git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C $$tmp && \
	 $(BIN)/python -m pip wheel -q --no-deps -w dist $$tmp; rc=$$?; rm -rf $$tmp; exit $$rc
	@ls dist/hark_voice-*.whl

bench: $(STAMP)
	$(BIN)/python -m bench

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .pytest_cache .ruff_cache
