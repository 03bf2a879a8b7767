# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use and are safe to run again.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install train-env airflow airflow-down airflow-status bench-ledger ddl compose-check clean

install: $(STAMP)

# torch goes in first and pinned: this machine has a local CPU build of 2.13.0, and any resolver
# that picks torch itself (or a newer torchvision) pulls gigabytes of CUDA packages. uv resolves the
# rest in seconds where pip backtracks for minutes; it keeps the torch that is already installed.
# --compile-bytecode writes the .pyc files pip would have written: uv skips them by default, and
# where PYTHONDONTWRITEBYTECODE is set (these machines, many container images) every process
# would otherwise compile ~650 modules from source, ~0.9 s of CPU per `taisu-etl` command.
$(STAMP): pyproject.toml
	bash .ci/system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(PY) -m pip install --quiet torch==2.13.0
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[ml,airflow,dev]'
	$(PY) -m compileall -q taisu_etl dags
	touch $(STAMP)

# open_clip's trainer in an environment of its own: open_clip_torch[training]==3.3.0 pins
# webdataset<=0.2.86, this project needs >=0.2.100. Used by tests/release/test_open_clip_train.py
# (the real `open_clip_train.main` on a release). torch first for the same reason as above;
# torchvision pinned because a newer one replaces torch with a CUDA build.
TRAIN_VENV  ?= .venv-train
TRAIN_STAMP := $(TRAIN_VENV)/.installed

train-env: $(TRAIN_STAMP)

$(TRAIN_STAMP): | $(STAMP)
	test -x $(TRAIN_VENV)/bin/python || python3 -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(TRAIN_VENV)/bin/python \
	  'open_clip_torch[training]==3.3.0' torchvision==0.28.0
	touch $(TRAIN_STAMP)

demo: install
	$(VENV)/bin/taisu-etl demo

test: install train-env
	$(PY) tests/preflight.py
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# Airflow 3 for this checkout, with its UI on http://127.0.0.1:8080 (`taisu-etl airflow up --help`):
# `make airflow` (SQLite + LocalExecutor, nothing to install), `make airflow AIRFLOW_ARGS=--production`
# (Postgres + Celery on Redis, workers for the default and gpu queues), `AIRFLOW_ARGS="--port 8081"`.
AIRFLOW_ARGS ?=
airflow: install
	$(VENV)/bin/taisu-etl airflow up $(AIRFLOW_ARGS)

airflow-down:
	$(VENV)/bin/taisu-etl airflow down

airflow-status:
	$(VENV)/bin/taisu-etl airflow status

bench-ledger: install
	$(PY) bench/ledger.py

ddl: install
	$(VENV)/bin/taisu-etl db ddl > sql/001_schema.sql

compose-check:
	docker compose config --quiet && echo "docker-compose.yml is valid"

clean:
	rm -rf var .pytest_cache
