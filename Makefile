# Two commands for a fresh machine:  make run   and   make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
# The 20 slowest tests are listed at the end of a run (the whole suite: 20 min on a quiet 2-core machine, 45 under load).
PYTEST_ARGS ?= --durations=20
export PREFLOOP_DATA_DIR ?= .prefloop
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: run serve test install dev migrate demo clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build. Where pip's configuration
# does not already offer the CPU wheel (this project's build machines have it locally), name PyTorch's
# CPU index: make dev TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

migrate: install
	$(VENV)/bin/prefloop db upgrade

demo: migrate
	$(VENV)/bin/prefloop demo

# Serves http://localhost:$(PORT) on SQLite, with the retraining watcher beside it.
run: demo
	$(serve)

# The same without the demo data and accounts, for your own campaign.
# The hint names the PREFLOOP_DATA_DIR / PREFLOOP_DATABASE_URL this server uses (the URL's password hidden):
# copied without them, the command made the admin in the default database.
serve: migrate
	@$(VENV)/bin/prefloop users list | grep -q "	admin	active" || $(PY) -c 'import sys; \
	  from annotate.settings import load_settings, operator_command; \
	  print("no admin yet: create one with", operator_command(load_settings(), sys.argv[1]), end=", "); \
	  print("then log in at", sys.argv[2])' "$(VENV)/bin/prefloop users add NAME --role admin" "http://localhost:$(PORT)"
	$(serve)

# The port is checked before the watcher starts: a second 'make run' said so only after starting one.
# The data directory is made here too: on PostgreSQL nothing else makes it, and without it the
# watcher's log could not be opened and the watcher never started.
define serve
@$(PY) -c 'import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
  s.bind(("", $(PORT)))' 2>/dev/null || { echo "port $(PORT) is in use (is 'make run' already running?):" \
  "stop that, or serve on another port: PORT=8765 make $@" >&2; exit 1; }
@mkdir -p $(PREFLOOP_DATA_DIR)
@$(VENV)/bin/prefloop retrain --watch >> $(PREFLOOP_DATA_DIR)/retrain.log 2>&1 & \
  watcher=$$!; trap "kill $$watcher 2>/dev/null" EXIT INT TERM; \
  echo "retraining watcher running (log: $(PREFLOOP_DATA_DIR)/retrain.log)"; \
  $(PY) -m streamlit run streamlit_app.py --server.port $(PORT) --server.headless true \
    --browser.gatherUsageStats false $(if $(PREFLOOP_MAX_UPLOAD_MB),--server.maxUploadSize $(PREFLOOP_MAX_UPLOAD_MB))
endef

# Every test: SQLite, PostgreSQL (127.0.0.1:5432) and the headless-browser tests.
# PREFLOOP_NO_SKIPS turns any skipped test into a failure.
test: dev
	PREFLOOP_NO_SKIPS=1 $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
