# mmlab: `make run` runs the default batch, `make test` the tests. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mmlab-installed
DEV    := $(VENV)/.mmlab-dev-installed
PARAMS ?= params/default.yaml
HOST   ?= 127.0.0.1

.PHONY: setup dev run smoke test lab ui bench lint clean

setup: $(STAMP)
dev: $(DEV)

$(PY):
	python3 -m venv $(VENV)

# Reinstalls only when the package's dependencies change (idempotent).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -e .
	$(PY) -m ipykernel install --sys-prefix --name mmlab --display-name "Python (mmlab)" >/dev/null
	touch $@

$(DEV): $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: $(STAMP)
	$(VENV)/bin/mmlab run $(PARAMS)

smoke: $(STAMP)
	$(VENV)/bin/mmlab run params/smoke.yaml

test: $(DEV)
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip $(HOST) --no-browser notebooks/

ui: $(STAMP)
	$(VENV)/bin/mmlab ui --host $(HOST)

# Rewrites benchmarks/RESULTS.md with the figures, the date and the machine.
bench: $(STAMP)
	$(PY) benchmarks/results.py

lint: $(DEV)
	$(VENV)/bin/ruff check mmlab tests benchmarks

clean:
	rm -rf runs cache
