# One-command set-up: `make demo` and `make test` build .venv first when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S := 0.2

.PHONY: setup syslibs demo test test-learning bench clean

setup: syslibs $(STAMP)

# System libraries: ffmpeg (torchcodec, re-encoding) and libusb (open3d).
syslibs:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	ldconfig -p 2>/dev/null | grep 'libusb-1.0.so.0' >/dev/null || missing="$$missing libusb-1.0-0"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing"; \
	    echo "run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/spatiotemporal demo --out demo_out

# The learning proofs train models to a quality bar for minutes each, so they form their own tier:
# `make test` stays a fast suite, and CI (.ci/run) runs both. -rP prints what each proof measured.
test: setup
	$(PY) -m pytest -q -m "not learning"

test-learning: setup
	$(PY) -m pytest -q -rP -m learning

bench: setup
	$(PY) -m benchmarks.run --out BENCHMARKS.md

clean:
	rm -rf $(VENV) demo_out bench_out
