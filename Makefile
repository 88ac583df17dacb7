# The two quick-start commands (README): `make demo` and `make test`.
# Both create .venv and install the project into it on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local-asr,dev]'
	touch $@

install: $(VENV)/.installed

# Kafka (from Maven Central), the local ASR server and a worker, on the bundled sample calls.
demo: install
	$(VENV)/bin/streams demo

# Unit and integration tests; the session starts its own Kafka broker and ASR server.
test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check streams schemas tests
	$(VENV)/bin/ruff format --check streams schemas tests

clean:
	rm -rf $(VENV) .cache .pytest_cache
