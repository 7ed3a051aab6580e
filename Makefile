# Two commands for a fresh machine:  make run   and   make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
export PREFLOOP_DATA_DIR ?= .prefloop
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: run test install dev migrate demo clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet torch==2.13.0
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
	@$(VENV)/bin/prefloop retrain --watch >> $(PREFLOOP_DATA_DIR)/retrain.log 2>&1 & \
	  watcher=$$!; trap "kill $$watcher 2>/dev/null" EXIT INT TERM; \
	  echo "retraining watcher running (log: $(PREFLOOP_DATA_DIR)/retrain.log)"; \
	  $(PY) -m streamlit run streamlit_app.py --server.port $(PORT) --server.headless true \
	    --browser.gatherUsageStats false

# Every test: SQLite, PostgreSQL (127.0.0.1:5432) and the headless-browser tests.
# PREFLOOP_NO_SKIPS turns any skipped test into a failure.
test: dev
	PREFLOOP_NO_SKIPS=1 $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
