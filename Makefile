# Countersign: the entry points people type. Every target installs what it needs and is safe to re-run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pycose (the independent COSE cross-check) cannot decode with cbor2 6.x, which the project uses, so it
# gets an environment of its own (FIELD-NOTES.md).
XCHECK := .venv-xcheck
XSTAMP := $(XCHECK)/.installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# chromium + chromium-driver: the hall page's tests drive Debian's own headless browser (no download);
# systemd: systemd-analyze verifies the gateway unit (test_2d); postgresql: the province's database, the
# tests start their own server from its binaries (tests/pg_helpers.py), as the postgres user.
DEBS := mosquitto mosquitto-clients socat faketime chromium chromium-driver systemd postgresql fonts-noto-cjk

.PHONY: all deps debs venv xcheck test demo bench lint clean firmware mpy-stubs fuzz

all: test

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

$(XSTAMP):
	test -x $(XCHECK)/bin/python || $(PYTHON) -m venv $(XCHECK)
	$(XCHECK)/bin/python -m pip install -q 'pycose==1.1.0' 'cbor2>=5.6,<6'
	touch $@

xcheck: $(XSTAMP)

deps: debs venv xcheck

test: deps
	$(PY) -m pytest -q

# The long differential fuzz of both codecs (tools/fuzz.py): a million mutated messages judged by the
# CPython decoder and the firmware's on MicroPython; prints inputs/s, the total and the worst input per
# CPU second; any crash, disagreement or slow decode is saved under protocol/vectors/fuzz/ and fails.
FUZZ_TOTAL ?= 1000000
fuzz: venv
	$(PY) tools/fuzz.py --total $(FUZZ_TOTAL)

# One hall for about a minute: real firmware keypads, the gateway, the province, one fault of each kind;
# then the hall page with the run's data until Ctrl-C (DEMO_EXIT=1: end with the verdict, for scripts).
demo: deps
	$(VENV)/bin/countersign sim hall --devices 4 --duration 45 --faults 5 --seed 7 $(if $(DEMO_EXIT),,--serve)

bench: deps
	@mkdir -p out
	$(PY) -m countersign.sim.bench --json out/bench.json

# The keypad firmware bundles as they go onto a keypad (common/bundle.py, one per board under
# out/firmware-bundle: the .mpy tree of cs/ and boards/, the same as a ROMFS image, and main.py), checked
# against their flash budget firmware/size-budget.json: prints every figure, its budget and the
# headroom; fails when over.
FW_BUNDLE := out/firmware-bundle
firmware: venv
	$(PY) tools/fwsize.py --bundle $(FW_BUNDLE) --budget firmware/size-budget.json

# MicroPython stubs of the reference board's firmware, for type-checking firmware/ against the device
# API. Installed with --target beside the venv's packages, not into them: they replace the stdlib stubs,
# which would break the CPython check (tools/mypy-firmware.ini).
MPY_STUBS_VERSION := 1.29.0.post1
MPY_STUBS := $(VENV)/mpy-stubs
MPY_STUBS_STAMP := $(MPY_STUBS)/.installed-$(MPY_STUBS_VERSION)
$(MPY_STUBS_STAMP): $(STAMP)
	rm -rf $(MPY_STUBS)
	$(PY) -m pip install -q --no-user --target $(MPY_STUBS) 'micropython-esp32-esp32-generic-c3-stubs==$(MPY_STUBS_VERSION)'
	touch $@

mpy-stubs: $(MPY_STUBS_STAMP)

# mypy cannot follow setuptools' folder mapping (protocol/ -> countersign.protocol, ...), so it checks a
# tree of symlinks laid out from pyproject's package-dir (tools/typetree.py), tools/ beside it. lint-imports
# checks the one-way import rule (pyproject [tool.importlinter]).
lint: venv mpy-stubs
	$(VENV)/bin/ruff check .
	$(PY) tools/typetree.py out/typecheck
	cd out/typecheck && PYTHONPATH=. $(CURDIR)/$(VENV)/bin/lint-imports --no-cache $(CURDIR)/pyproject.toml
	cd out/typecheck && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p countersign
	cd out/typecheck && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml $(CURDIR)/tools/*.py
	MYPYPATH=$(CURDIR)/$(MPY_STUBS):$(CURDIR)/firmware:$(CURDIR)/firmware/drivers $(VENV)/bin/mypy --config-file tools/mypy-firmware.ini \
	  --custom-typeshed-dir $(MPY_STUBS) --cache-dir out/mypy-firmware-cache \
	  firmware/main.py firmware/cs firmware/boards firmware/drivers

clean:
	rm -rf $(VENV) $(XCHECK) out .pytest_cache
