# Two commands do all set-up on a fresh machine with Python >= 3.11 (and Node.js for the PGlite suite):
#   make demo   create .venv, install, run the main job on the embedded PostgreSQL
#   make test   create .venv, install, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PGLITE := tests/pglite
# two pytest workers (pytest-xdist), each with its own embedded PostgreSQL and PGlite: most tests
# wait on sockets and clocks, so the suite takes about half as long on 2 cores. A module's tests stay
# on one worker (loadscope), so a module fixture (a live collection, a written export) runs once.
PYTEST_ARGS ?= -n 2 --dist loadscope --durations=25

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,plot]"
	@touch $(STAMP)

install: $(STAMP)

$(PGLITE)/node_modules/.package-lock.json: $(PGLITE)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd $(PGLITE) && npm ci --silent --no-audit --no-fund; \
	else echo "npm not found: the PGlite TimescaleDB tests will be skipped (they fail under CI=true)"; fi

demo: $(STAMP)
	$(BIN)/microstructure demo

test: $(STAMP) $(PGLITE)/node_modules/.package-lock.json
	MICROSTRUCTURE_REQUIRE_PGLITE=$${CI:+1} $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	-$(BIN)/microstructure db stop
	rm -rf $(VENV) $(PGLITE)/node_modules .pytest_cache
