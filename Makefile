# mmlab: `make run` runs the default batch, `make test` the fast tests. Both set up .venv first,
# from the lock files (requirements.lock, requirements-dev.lock): exact pins, no resolution.
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.mmlab-installed
DEV    := $(VENV)/.mmlab-dev-installed
LOCK   := requirements.lock
DEVLOCK := requirements-dev.lock
PARAMS ?= params/default.yaml
HOST   ?= 127.0.0.1
KERNEL := mmlab
MINVENV ?= .venv-min

.PHONY: setup dev kernel run smoke test test-slow test-full test-min lab ui server server-stop \
	bench lint format lock lock-upgrade clean

setup: $(STAMP)
dev: $(DEV)

$(PY):
	python3 -m venv $(VENV)

# The lock is the whole environment: --no-deps installs exactly its pins (no resolver, so a fresh
# clone gets what CI tested), and `pip check` fails if pyproject.toml needs what it lacks.
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(MAKE) --no-print-directory kernel
	touch $@

$(DEV): $(STAMP) $(DEVLOCK)
	$(PY) -m pip install -q --no-deps -r $(DEVLOCK)
	$(PY) -m pip check
	touch $@

# One kernel, `mmlab`, named by every notebook and used by the runner, running this checkout's
# .venv/bin/python. --user: where any JupyterLab (system-wide, pipx, conda) looks. --sys-prefix:
# what this venv's own Jupyter (the runner, `make lab`) finds first, whichever checkout last
# wrote the --user one.
kernel: | $(PY)
	$(PY) -m ipykernel install --user --name $(KERNEL) --display-name "Python (mmlab)" >/dev/null
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (mmlab)" \
		>/dev/null

run: $(STAMP)
	$(VENV)/bin/mmlab run $(PARAMS)

smoke: $(STAMP)
	$(VENV)/bin/mmlab run params/smoke.yaml

# Fast tests (a few minutes); the slow ones run notebooks, browsers and servers end to end.
test: $(DEV)
	$(PY) -m pytest -m "not slow"

test-slow: $(DEV)
	$(PY) -m pytest -m slow

# Everything: the fast tests first (a quick failure), then the slow ones.
test-full: test test-slow

# The lowest versions pyproject.toml allows for every direct dependency (uv's lowest-direct
# resolution), in a venv of their own, and the fast tests on them.
test-min: $(UV)
	rm -rf $(MINVENV)
	$(UV) venv -q --python $(PY) $(MINVENV)
	$(UV) pip compile -q pyproject.toml --extra all --extra dev --resolution lowest-direct \
		--index-strategy unsafe-best-match $(UV_INDEXES) -o $(MINVENV)/requirements-min.txt
	$(UV) pip install -q --python $(MINVENV)/bin/python --no-deps \
		--index-strategy unsafe-best-match $(UV_INDEXES) -r $(MINVENV)/requirements-min.txt
	$(UV) pip install -q --python $(MINVENV)/bin/python --no-deps -e .
	$(MINVENV)/bin/python -m pytest -m "not slow" -p no:cacheprovider

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip $(HOST) --no-browser notebooks/

ui: $(STAMP)
	$(VENV)/bin/mmlab ui --host $(HOST)

# A shared MLflow tracking server on a local PostgreSQL (.mmlab/postgres, a free port), artifacts
# in .mmlab/artifacts; it prints the MLFLOW_TRACKING_URI to export. Ctrl-C or `make server-stop`
# stops both. SERVER_FLAGS=--auth turns on MLflow's basic auth.
SERVER_PORT ?= 5000
server: $(STAMP)
	$(VENV)/bin/mmlab server --host $(HOST) --port $(SERVER_PORT) $(SERVER_FLAGS)

server-stop: $(STAMP)
	$(VENV)/bin/mmlab server --stop

# Rewrites benchmarks/RESULTS.md with the figures of every benchmarks/bench_*.py, the date and
# the machine. bench_scale among them generates and extracts 10,000 and 100,000 scenes: about
# half an hour on 2 cores.
bench: $(STAMP)
	$(PY) benchmarks/results.py

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Refresh the locks after editing pyproject.toml's dependencies: existing pins are kept where
# they still fit (small diffs); `make lock-upgrade` moves everything to the newest releases.
# uv does not read pip's configuration, so pip's extra indexes and find-links (here: the local
# disk that holds torch) are handed to it.
UV_INDEXES = $(foreach u,$(shell $(PY) -m pip config get global.extra-index-url 2>/dev/null),\
	--extra-index-url $(u)) $(foreach f,$(shell $(PY) -m pip config get global.find-links \
	2>/dev/null),--find-links $(f))
LOCK_FLAGS = --universal --python-version 3.11 --index-strategy unsafe-best-match \
	--no-emit-index-url --no-emit-find-links $(UV_INDEXES)

# uv alone (at the dev lock's version), so a stale lock never blocks its own refresh.
$(UV): | $(PY)
	$(PY) -m pip install -q --no-deps $$(grep -s '^uv==' $(DEVLOCK) || echo uv)

lock: $(UV)
	$(UV) pip compile -q pyproject.toml --extra all $(LOCK_FLAGS) $(UPGRADE) -o $(LOCK)
	$(UV) pip compile -q pyproject.toml --extra all --extra dev -c $(LOCK) $(LOCK_FLAGS) \
		$(UPGRADE) -o $(DEVLOCK)

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

clean:
	rm -rf runs cache $(MINVENV)
