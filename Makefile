# maxsup-repro: `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SYSTEM_PKGS := pkg-config libturbojpeg0-dev libopencv-dev dataset-fashion-mnist
EXTRAS := ffcv,analysis,hub,train,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt | sha1sum | cut -c1-12)

.PHONY: install system-deps test demo bench gpu-check lint clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c requirements/constraints.txt torch torchvision
	$(PIP) install -q -c requirements/constraints.txt numpy "cython>=3" pkgconfig
	$(PIP) install -q -c requirements/constraints.txt --no-build-isolation -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*; touch $@
	@echo "install: done ($(VENV))"

# System packages: FFCV's build needs pkg-config, libturbojpeg and OpenCV headers; the embedded default dataset is
# Debian's dataset-fashion-mnist. Installed with apt-get when we are root, otherwise the exact command is printed.
system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "install: apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "install: missing system packages; run: sudo apt-get install -y$$missing" >&2; \
	fi

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) demo/run_demo.py

bench: install
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# One CUDA device, <= 4 minutes (bench/gpu_check.py); a machine without this venv (the lent GPU machines) uses its
# python3 with PYTHONPATH=. . Without CUDA it runs the tiny CPU mode, as `make bench` does.
gpu-check:
	PYTHONPATH=. $(if $(wildcard $(PY)),$(PY),python3) bench/gpu_check.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
