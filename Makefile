# calcnode: `make run` starts the node; `make test` sets everything up on a fresh Debian machine
# with Python 3.11 and runs the whole suite; `make bench` runs the benchmarks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests talk to: DCMTK (dsrdump, dcmp2pgm, storescu ...), dicom3tools
# (dciodvfy) and Orthanc (a PACS peer; the tests start their own instances on free loopback
# ports and never use the service the package may start), and Chromium with its WebDriver for the
# dashboard test (the installed browser, driven by Selenium; never a downloaded build). Each
# entry is "package:binary that proves it is installed".
DEBS   := dcmtk:/usr/bin/dsrdump dicom3tools:/usr/bin/dciodvfy orthanc:/usr/sbin/Orthanc \
          chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test run venv tools bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

tools:
	@missing=""; for d in $(DEBS); do [ -x "$${d#*:}" ] || missing="$$missing $${d%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: venv tools
	$(BIN)/python -m pytest

# The node on its embedded defaults: DICOM on 127.0.0.1:11112 as CALCNODE, spool under var/.
run: venv
	$(BIN)/calcnode serve --config config/calcnode.yaml

bench: venv tools
	$(BIN)/python benchmarks/detect.py --images 100 --jobs 2
	$(BIN)/python benchmarks/receive.py --repeats 6 --latency-runs 2

clean:
	rm -rf $(VENV) .pytest_cache var
