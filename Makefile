# tapeserve — `make run` serves, `make test` runs the whole suite; both install into .venv first if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

TAPESERVE_HOST ?= 127.0.0.1
TAPESERVE_PORT ?= 8000
export TAPESERVE_HOST TAPESERVE_PORT

.PHONY: install run test lint typecheck unit bench bench-explain lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tapeserve needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	# the project itself, client and server: the lock above holds the server extra's dependencies too
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e '.[server]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tapeserve serve --host $(TAPESERVE_HOST) --port $(TAPESERVE_PORT)

lint: $(STAMP)
	$(BIN)/ruff check service schemas tests bench deploy models
	$(BIN)/ruff format --check service schemas tests bench deploy models

typecheck: $(STAMP)
	$(BIN)/mypy service schemas tests bench deploy models

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit

# the performance table, the explanations' table, then the fault scenarios (replicas behind real nginx) into
# README's table
bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.explain
	$(BIN)/python -m bench.faults

# explanations of a posted network against /v1/networks/gradients, a tutorial-style loop and one tf.function
bench-explain: $(STAMP)
	$(BIN)/python -m bench.explain

# Re-resolve requirements.in into the lock file (needs the package registry).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.in
	.lock-venv/bin/python -m pip freeze --all --exclude pip | LC_ALL=C sort -f > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
