# Two commands matter: `make demo` (the main job on the embedded local stack) and
# `make test` (everything CI runs). Both build .venv first, offline-safe.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# checkov pins an old boto3, so it lives in a venv of its own.
LINT_VENV := .cache/lint-venv
LINT_STAMP := $(LINT_VENV)/.installed
CHECKOV := checkov==3.3.30

.PHONY: demo test lint unit bench-windows bench-sinks bench-processor bench-memory clean lock

$(STAMP): pyproject.toml scripts/install-kclpy.sh
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[local,dev]'
	scripts/install-kclpy.sh $(VENV)/bin/python
	touch $(STAMP)

$(LINT_STAMP):
	test -x $(LINT_VENV)/bin/python || $(PY) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install -q '$(CHECKOV)'
	touch $(LINT_STAMP)

demo: $(STAMP)
	$(VENV)/bin/aetherstream demo

test: $(STAMP) $(LINT_STAMP) lint
	AETHERSTREAM_REQUIRE_LINTERS=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check consumer tests
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests/unit

bench-windows: $(STAMP)
	$(VENV)/bin/aetherstream bench windows

bench-sinks: $(STAMP)
	$(VENV)/bin/aetherstream bench sinks

bench-processor: $(STAMP)
	$(VENV)/bin/aetherstream bench processor

# RSS while one sink is down for 60 s under load, against the processor's memory budget.
bench-memory: $(STAMP)
	$(VENV)/bin/aetherstream bench memory

# The image's lock file: every runtime dependency of pyproject.toml (and the build tools in
# docker/build-requirements.in) pinned with sha256 hashes, for Linux x86_64 and Python 3.11.
# uv runs from a throwaway venv and resolves against PyPI; pins already in the lock are kept
# unless pyproject.toml asks otherwise. tests/unit/test_lock.py keeps the two in step.
UV := uv==0.13.9
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
	  && $(PY) -m venv "$$tmp" && "$$tmp/bin/pip" install -q '$(UV)' \
	  && "$$tmp/bin/uv" pip compile --quiet --generate-hashes \
	       --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	       --custom-compile-command 'make lock' -o requirements.lock \
	       pyproject.toml docker/build-requirements.in

clean:
	rm -rf $(VENV) .cache run
