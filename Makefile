# Two commands: `make lab` (set up on first run, then open the workbench) and `make test`.
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8888
# Jupyter refuses to start as root without --allow-root (CI and containers run as root); pass it
# only then. USER_ID can be overridden to check both branches: `make -n lab USER_ID=1000`.
USER_ID ?= $(shell id -u)
ALLOW_ROOT := $(if $(filter 0,$(USER_ID)),--allow-root,)
# `make serve` shows tracebacks in the page only when asked: `make serve TRACEBACKS=1`.
TRACEBACKS ?= 0
SHOW_TRACEBACKS := $(if $(filter 1 yes true True,$(TRACEBACKS)),True,False)
# OpenMP threads sleep instead of spinning while they wait: on 2 shared cores the default
# spin-wait made a torch loop 20x slower at load 5 (workbench/_threads.py has the figures).
# Exported to every recipe (pytest, its notebook kernels, jupyter, voila, benches).
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
DEBIAN_PKGS := espeak-ng flite festival festvox-kallpc16k sox asterisk-core-sounds-en asterisk-core-sounds-en-wav \
               asterisk-moh-opsound-wav \
               chromium chromium-driver fonts-dejavu-core

# Optional: what `workbench verify-arm64` needs (an emulated ARM64 CPU and a Debian arm64 root).
# Not part of `make test` (the ARM64 run is slow): `make apt-arm64`, then `workbench verify-arm64`.
ARM64_PKGS := qemu-user-static debootstrap

.PHONY: lab test serve setup apt apt-arm64 data demo bench clean-venv

$(PY):
	$(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install only when the pins change.
$(STAMP): $(PY) requirements.txt requirements-test.txt pyproject.toml
	$(PY) -m pip install -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the data builder and the browser tests need (only when running as root).
$(APT_STAMP): | $(PY)
	@if [ "$$(id -u)" = "0" ]; then \
	  missing=""; for p in $(DEBIAN_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	else echo "not root: install these Debian packages yourself if missing: $(DEBIAN_PKGS)"; fi
	touch $(APT_STAMP)

apt: $(APT_STAMP)

apt-arm64:
	@if [ "$$(id -u)" = "0" ]; then \
	  missing=""; for p in $(ARM64_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	else echo "not root: install these Debian packages yourself if missing: $(ARM64_PKGS)"; fi

# The URL printed carries the access token (open it as printed).
lab: setup
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(PORT) $(ALLOW_ROOT) notebooks/00_workbench.ipynb

# Voila with a generated token (printed in the URL); no tracebacks in the page unless TRACEBACKS=1.
serve: setup
	$(VENV)/bin/voila notebooks/00_workbench.ipynb --Voila.ip=127.0.0.1 --port=$(PORT) --no-browser \
	  --token --show_tracebacks=$(SHOW_TRACEBACKS)

test: setup apt
	$(PY) -m pytest -q

bench: setup
	$(PY) -m workbench bench interactive --json
	$(PY) -m workbench bench latency --json
	$(PY) -m workbench bench export --json

clean-venv:
	rm -rf $(VENV)
