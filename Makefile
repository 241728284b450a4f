# Two commands: `make run` runs the whole bridge, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint bench clean

$(VENV)/.installed: requirements.txt
	@echo "[setup] creating $(VENV) and installing requirements.txt"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	@touch $@

setup: $(VENV)/.installed
	@command -v redis-server >/dev/null || { echo "[setup] installing Debian's redis-server"; \
		(apt-get update -q && apt-get install -y -q redis-server) >/dev/null || \
		echo "[setup] could not install redis-server: set REDIS_URL to a running Redis"; }

run: setup
	$(PY) manage.py run_bridge

test: setup
	bash scripts/run_tests.sh

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf var/log var/sim var/*.sqlite3*
