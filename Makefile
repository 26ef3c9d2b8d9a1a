# ML DevOps App — the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# The embedded default store (unless MLFLOW_TRACKING_URI is already set).
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
export PATH := $(BIN):$(PATH)
MODEL_NAME ?= breast-cancer-classifier
UI_PORT    ?= 5001
PORT       ?= 5000
PYTEST_ARGS ?=
PIP_VERSION        := 26.3
SETUPTOOLS_VERSION := 84.2.1

.PHONY: help install audit weekly monthly drill run stop train ui serve status test test-fast lint bench bench-batching bench-rollout bench-backup bench-train bench-score drill audit weekly monthly clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing the pinned dependencies (a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION) setuptools==$(SETUPTOOLS_VERSION) 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[stack,test,spark]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import mlflow, sklearn, pyspark, serving, training, mlops" && touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (pinned)

run: $(STAMP) ## set up, train + register + promote, start UI (5001) and serving (5000), one prediction
	@$(BIN)/mlops init
	@echo "==> training through 'mlflow run' (registers the next version, promotes it to Production)"
	@$(BIN)/mlflow run . -e train --env-manager local --experiment-name $(MODEL_NAME) \
	    -P model_name=$(MODEL_NAME) -P promote=production
	@scripts/daemon.sh start ui -- $(BIN)/mlops ui --port $(UI_PORT)
	@scripts/daemon.sh start serving -- $(BIN)/mlops serve --port $(PORT)
	@$(BIN)/mlops wait-ready --url http://127.0.0.1:$(PORT) --timeout 180
	@$(BIN)/mlops sample --url http://127.0.0.1:$(PORT)
	@echo
	@echo "MLflow UI:          http://127.0.0.1:$(UI_PORT)"
	@echo "Prediction service: http://127.0.0.1:$(PORT)  (try: curl http://127.0.0.1:$(PORT)/api/model/info)"
	@echo "Logs:               logs/app.log, .run/*.log      Stop everything: make stop"

stop: ## stop what `make run` started (UI and serving), nothing else
	@scripts/daemon.sh stop serving
	@scripts/daemon.sh stop ui

train: $(STAMP) ## retrain through `mlflow run` (ARGS='-P model=random_forest -P promote=auto')
	@$(BIN)/mlops init
	@$(BIN)/mlflow run . -e train --env-manager local --experiment-name $(MODEL_NAME) $(ARGS)

status: $(STAMP) ## registry and serving status
	@$(BIN)/mlops status

TEST_WORKERS ?= 2
test: $(STAMP) ## run the whole test suite (real servers; TEST_WORKERS=2 processes; ~25 minutes on 2 cores)
	@$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP) ## only the fast tests
	@$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	@$(BIN)/ruff check .

bench: $(STAMP) ## serving benchmarks: vs `mlflow models serve`, the floor and the HTTP ceiling; batching; canary/shadow
	@$(BIN)/python scripts/bench_serving.py
	@$(BIN)/python scripts/bench_batching.py
	@$(BIN)/python scripts/bench_rollout.py

bench-batching: $(STAMP) ## batching benchmark alone: on/off vs floor, ceiling, mlflow (logistic and 100-tree forest)
	@$(BIN)/python scripts/bench_batching.py $(ARGS)

bench-rollout: $(STAMP) ## throughput during a 10 % canary and a 10 % shadow vs none
	@$(BIN)/python scripts/bench_rollout.py $(ARGS)

bench-backup: $(STAMP) ## backup/restore benchmark (10 models x 20 versions)
	@$(BIN)/python scripts/bench_backup.py

bench-train: $(STAMP) ## training benchmark: `mlflow run -e train` vs a plain sklearn fit, 1M rows (ARGS='--model hist_gradient_boosting')
	@$(BIN)/python scripts/bench_train.py $(ARGS)

bench-score: $(STAMP) ## batch scoring benchmark: `mlops score --master local[2]` vs a plain pandas+pyfunc loop, 1M rows (ARGS='--rows 10000000')
	@$(BIN)/python scripts/bench_score.py $(ARGS)

audit: $(STAMP) ## known-vulnerable installed dependencies (pip-audit + security/advisories.json)
	@$(BIN)/python scripts/audit.py

weekly: $(STAMP) ## weekly checks: ERROR lines in the logs, disk use, backups present and verified
	@scripts/maintenance.sh weekly

monthly: $(STAMP) ## monthly checks: outdated dependencies, vulnerability audit, resource use
	@scripts/maintenance.sh monthly

drill: $(STAMP) ## disaster-recovery drill on a throwaway local stack: backup, destroy, restore, compare
	@$(BIN)/python scripts/dr_drill
