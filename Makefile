# Entry points: `make help` lists them. Each target creates the virtual environment on first use.
# Needs Python 3.11, bash and make; nothing GNU-only (dates are computed with the venv's Python).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export SHOPML_HOME ?= $(CURDIR)/.state
DEMO_START ?= 2026-11-01
DEMO_DAYS ?= 10
PIP_VERSION := 26.3
SHOPML := $(BIN)/shopml
# `$(call day_after,DAY,N)`: the day N days after DAY, YYYY-MM-DD (portable: no GNU `date -d`).
day_after = $$($(PY) -c 'import datetime as d, sys; print(d.date.fromisoformat(sys.argv[1]) + d.timedelta(days=int(sys.argv[2])))' $(1) $(2))

.PHONY: audit images test-compose help install demo airflow serve test test-fast test-slow test-integration test-reliability test-system bench-data bench-models bench-price bench-fraud bench-fraud-repeats bench-fraud-serve bench-serve bench-runtime bench-predlog bench-latency-guard bench-gate-calibration bench-airflow gpu-check-data lock lint typecheck docs docs-serve data clean

help: ## list the targets, one line each
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)$$/\1\t\2/' | expand -t 24

$(VENV)/.installed: requirements.lock requirements-torch-cpu.lock requirements-torch.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==$(PIP_VERSION)"
	@# Every file by its hash, nothing resolved here (tools/lock.py wrote the locks).
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	@# torch: the CPU build where pip finds one (its find-links, a mirror), else PyPI's with its CUDA runtime.
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements-torch-cpu.lock > $(VENV)/torch-cpu.log 2>&1 \
	  || { echo "no CPU build of torch found: PyPI's build and its runtime (requirements-torch.lock); pip said:"; \
	       grep -E '^ERROR' $(VENV)/torch-cpu.log | head -3; \
	       $(PY) -m pip install --quiet --require-hashes --no-deps -r requirements-torch.lock; }
	$(PY) -m pip check
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@
	@echo "installed into $(VENV) (versions pinned by requirements.lock)"

install: $(VENV)/.installed ## create .venv from requirements.lock (pinned) and install the project

demo: install ## the whole pipeline end to end on a generated shop, 6 to 9 minutes
	@# A shop dense enough in users and items per event for the sequential model to learn from.
	@# 5% fraudulent orders, chargebacks within a day of their order, and a one-day label maturity window for the fraud
	@# family (params.yaml's 30 days need months of data; the demo has ten days): demo-params.yaml.
	$(PY) -m pipeline generate --start-date $(DEMO_START) --days $$(($(DEMO_DAYS) + 2)) --events-per-day 5000 \
	  --initial-users 2000 --initial-items 1200 --seed 11 --fraud-rate 0.05 --chargeback-days 0.5 1
	@$(PY) -c 'import sys, yaml; p = yaml.safe_load(open("params.yaml")); p["train_fraud"].update(maturity_days=1, valid_days=2, test_days=3, min_train_days=2); yaml.safe_dump(p, open(sys.argv[1], "w"), sort_keys=False)' $(SHOPML_HOME)/demo-params.yaml
	@# The same window for judging served fraud scores (policy.yaml's 720 hours): demo-policy.yaml.
	@$(PY) -c 'import sys, yaml; p = yaml.safe_load(open("policy.yaml")); p["monitoring"]["fraud"]["horizon_hours"] = 24; yaml.safe_dump(p, open(sys.argv[1], "w"), sort_keys=False)' $(SHOPML_HOME)/demo-policy.yaml
	@echo "== the first $$(($(DEMO_DAYS) - 1)) days through the same stages without Airflow (faster) =="
	$(PY) -m pipeline run --start $(DEMO_START) --days $$(($(DEMO_DAYS) - 1)) > $(SHOPML_HOME)/demo-backfill.log 2>&1 \
	  || { tail -40 $(SHOPML_HOME)/demo-backfill.log; exit 1; }
	@last=$(call day_after,$(DEMO_START),$$(($(DEMO_DAYS) - 1))); \
	run=$(call day_after,$$last,1); \
	echo "== airflow dags test ingest_events $$run (data interval: $$last) =="; \
	$(PY) -m pipeline airflow dags test ingest_events $$run > $(SHOPML_HOME)/demo-ingest.log 2>&1 \
	  || { tail -40 $(SHOPML_HOME)/demo-ingest.log; exit 1; }; \
	grep -E "^(ingested|validation of|dataset version)" $(SHOPML_HOME)/demo-ingest.log
	@for dag in retrain_next_item retrain_purchase_propensity retrain_price retrain_fraud retrain_next_item; do \
	  echo "== airflow dags test $$dag: features -> train -> evaluate -> gate -> register -> package -> promote =="; \
	  SHOPML_PARAMS=$(SHOPML_HOME)/demo-params.yaml SHOPML_POLICY=$(SHOPML_HOME)/demo-policy.yaml $(PY) -m pipeline airflow dags test $$dag > $(SHOPML_HOME)/demo-$$dag.log 2>&1 \
	    || { tail -60 $(SHOPML_HOME)/demo-$$dag.log; exit 1; }; \
	  grep -E "^([a-z_]+ gate decision|  (PASS|FAIL) |  parity( by user id)?: |[a-z_]+: champion is now|[a-z_]+ floor serves|run [0-9a-f]+ on dataset)" \
	    $(SHOPML_HOME)/demo-$$dag.log; \
	done
	@echo "== registry =="
	@$(PY) -m pipeline models
	@echo "state folder: $(SHOPML_HOME)"
	@echo "data docs:    $(SHOPML_HOME)/gx/gx/uncommitted/data_docs/local_site/index.html"
	@echo "dataset:      $$(cat $(SHOPML_HOME)/dataset/versions/current.json | $(PY) -c 'import json,sys; d=json.load(sys.stdin); print(d["version"], d["path"])')"
	@echo "MLflow UI:    $(BIN)/mlflow ui --backend-store-uri sqlite:///$(SHOPML_HOME)/mlflow/mlflow.db"
	@tag=$$($(PY) -m pipeline lineage --model next_item | $(PY) -c 'import json,sys; print(json.load(sys.stdin)["bento_tag"])'); \
	echo "champion's Bento: $$tag"; \
	echo "serve it:     make serve    (= $(PY) -m pipeline serve --model next_item --bento-tag $$tag --port 3000)"; \
	user=$$($(PY) -c 'import glob,sys,polars as pl; print(pl.read_parquet(sorted(glob.glob(sys.argv[1] + "/events/*/part-0.parquet"))[-1])["user_id"][0])' $(SHOPML_HOME)/dataset/canonical); \
	echo "then:         curl -s -X POST localhost:3000/recommend -H \"authorization: Bearer \$$KEY\" -H 'content-type: application/json' -d '{\"user_id\": \"$$user\", \"k\": 5}'"; \
	echo "== the price champion, served, asked for prices (shopml serve --model price serves it for good) =="; \
	$(PY) -m pipeline.families.price.ask 3 2> $(SHOPML_HOME)/demo-price.log || { tail -30 $(SHOPML_HOME)/demo-price.log; exit 1; }
	@echo "== the fraud champion, served, scoring orders at checkout (shopml serve --model fraud serves it for good) =="
	$(PY) -m pipeline.families.fraud.ask 2> $(SHOPML_HOME)/demo-fraud.log || { tail -30 $(SHOPML_HOME)/demo-fraud.log; exit 1; }
	@day=$(call day_after,$(DEMO_START),$(DEMO_DAYS)); \
	echo "== the closed loop: the champion serves $$day's sessions; that day and the next are ingested, the answers judged =="; \
	$(PY) -m pipeline replay --model next_item --date $$day --serve > $(SHOPML_HOME)/demo-replay.log 2>&1 \
	  || { tail -30 $(SHOPML_HOME)/demo-replay.log; exit 1; }; \
	grep -E "^(serving|replayed)" $(SHOPML_HOME)/demo-replay.log; \
	$(PY) -m pipeline run --start $$day --days 2 > $(SHOPML_HOME)/demo-loop-ingest.log 2>&1 \
	  || { tail -30 $(SHOPML_HOME)/demo-loop-ingest.log; exit 1; }; \
	grep -E "^published" $(SHOPML_HOME)/demo-loop-ingest.log; \
	$(PY) -m pipeline monitor --model next_item --date $$day > $(SHOPML_HOME)/demo-monitor.log 2>&1 \
	  || { tail -30 $(SHOPML_HOME)/demo-monitor.log; exit 1; }; \
	grep -E "^(drift|skew|retrain|MLflow run)" $(SHOPML_HOME)/demo-monitor.log; \
	grep -E "^(online|offline) next_item" $(SHOPML_HOME)/demo-monitor.log; \
	echo "== the fraud champion scores $$day's orders at checkout; their chargebacks, within a day, judge it =="; \
	$(PY) -m pipeline replay --model fraud --date $$day --serve > $(SHOPML_HOME)/demo-replay-fraud.log 2>&1 \
	  || { tail -30 $(SHOPML_HOME)/demo-replay-fraud.log; exit 1; }; \
	grep -E "^replayed" $(SHOPML_HOME)/demo-replay-fraud.log; \
	SHOPML_POLICY=$(SHOPML_HOME)/demo-policy.yaml $(PY) -m pipeline monitor --model fraud --date $$day \
	  > $(SHOPML_HOME)/demo-monitor-fraud.log 2>&1 || { tail -30 $(SHOPML_HOME)/demo-monitor-fraud.log; exit 1; }; \
	grep -E "^(online|offline|retrain) fraud" $(SHOPML_HOME)/demo-monitor-fraud.log

# Serve the champion's Bento (MODEL=purchase_propensity for the other model) on port 3000.
MODEL ?= next_item
serve: install ## serve the champion's Bento on port 3000 (MODEL=purchase_propensity for the other)
	$(PY) -m pipeline serve --model $(MODEL) --port 3000

# The Airflow UI on this project's DAGs and state (SQLite, LocalExecutor); Ctrl-C stops it.
airflow: install ## the Airflow UI on this project's DAGs and state (Ctrl-C stops it)
	@pw=$(SHOPML_HOME)/airflow/simple_auth_manager_passwords.json.generated; \
	$(PY) -m pipeline airflow standalone > $(SHOPML_HOME)/airflow-standalone.log 2>&1 & pid=$$!; \
	trap "kill $$pid 2>/dev/null" INT TERM EXIT; \
	for i in $$(seq 1 180); do [ -s $$pw ] && curl -sf -o /dev/null http://localhost:8080/api/v2/monitor/health && break; \
	  kill -0 $$pid 2>/dev/null || { tail -30 $(SHOPML_HOME)/airflow-standalone.log; exit 1; }; sleep 1; done; \
	echo "Airflow UI: http://localhost:8080"; \
	$(PY) -c 'import json,sys; [print(f"  login: {u}  password: {p}") for u, p in json.load(open(sys.argv[1])).items()]' $$pw; \
	echo "  log:   $(SHOPML_HOME)/airflow-standalone.log"; \
	wait $$pid

# Two pytest-xdist workers, each running whole test modules (their module-scoped shops built once):
# on 2 cores the suite's waits (servers starting, subprocesses) overlap the other worker's training.
TEST_WORKERS ?= 2
test: install ## the default test suite (about 12 minutes on 2 cores, two workers)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The fast layer alone: no training, no servers, no Airflow runs (run it on every change). Two workers
# stealing single tests: 75 s on 2 cores, against 119 s on one and 88 s with whole modules per worker
# (2026-12-07, 220 tests; docs/benchmarks/ci.md).
test-fast: install ## the fast layer: no training, servers or Airflow runs (under 2 minutes)
	$(PY) -m pytest -m fast -n $(TEST_WORKERS) --dist worksteal

test-slow: install ## the longest end-to-end runs: Airflow DAGs, a backfill, torchrun
	$(PY) -m pytest -m slow

# The production profile end to end on this machine's PostgreSQL and Redis (no Docker): an MLflow server,
# Airflow's api-server and a Celery worker as processes. SHOPML_TEST_POSTGRES_URL and SHOPML_TEST_REDIS_URL
# say where the servers are (defaults: postgresql://postgres@127.0.0.1:5432/postgres, redis://127.0.0.1:6379/15).
# Fault injection (SIGKILL at every kill point, then a rerun) and fuzzing of the served APIs and the parsers.
test-reliability: install ## SIGKILL at every kill point, then a rerun; fuzzing of the APIs and parsers
	$(PY) -m pytest -m reliability -s tests/test_reliability.py tests/test_fuzz.py

test-integration: install ## the production profile on this machine's PostgreSQL and Redis
	$(PY) -m pytest -m integration tests/test_integration.py

# The two suites above side by side, as CI runs them. Each keeps about one core busy (servers and
# workers started, killed and rerun one after another), so on 2 cores the pair takes about as long as
# the longer one instead of the sum. The reliability suite is the longer (8 min 30 s against 5 min
# 20 s side by side, 2026-12-07, AMD host), so its restart-under-load test ($(RESTART_TEST)) runs in
# the integration lane, after that suite. Every line is prefixed with its lane; the target fails when either does.
RESTART_TEST = under_load_a_promotion_and_restart
test-system: install ## test-integration and test-reliability side by side, lines prefixed (CI runs this)
	@failed=""; \
	( set -o pipefail; { $(MAKE) --no-print-directory test-integration && \
	  $(PY) -m pytest -m reliability -s tests/test_fuzz.py -k $(RESTART_TEST); } 2>&1 \
	  | awk '{ print "integration | " $$0; fflush() }' ) & integration=$$!; \
	( set -o pipefail; $(PY) -m pytest -m reliability -s tests/test_reliability.py tests/test_fuzz.py \
	  -k "not $(RESTART_TEST)" 2>&1 | awk '{ print "reliability | " $$0; fflush() }' ) & reliability=$$!; \
	wait $$integration || failed="$$failed test-integration (and the restart test after it)"; \
	wait $$reliability || failed="$$failed test-reliability"; \
	if [ -n "$$failed" ]; then echo "test-system: failed:$$failed (their lines above carry the prefix)"; exit 1; fi

bench-price: install ## demand forecasts (backtest WAPE, RMSSE) and elasticities on UCI and the generated shop
	$(PY) -m benchmarks.bench_price

bench-fraud: install ## fraud scores (AUC-PR, recall at the review budget, cost) against the rules and LightGBM
	$(PY) -m benchmarks.bench_fraud

bench-fraud-repeats: install ## how far one training run's fraud figures move: refits with other seeds, and without 1% of the training orders
	$(PY) -m benchmarks.fraud_repeats

bench-fraud-serve: install ## the fraud Bento's /score latency, one order a request, at 1 and 8 clients
	$(PY) -m benchmarks.bench_fraud_serve

bench-models: install ## next-item and propensity metrics on the public samples, model throughput
	$(PY) -m benchmarks.bench_models
	$(PY) -m benchmarks.bench_propensity
	$(PY) -m benchmarks.bench_throughput

# Load benchmark of the served recommender over 50,000 items: requests/s and p50/p95/p99 latency at
# several concurrency levels, batching on and off, beside the raw model's batched throughput.
bench-serve: install ## load test of the served models: requests/s and latency percentiles
	$(PY) -m benchmarks.bench_serve

# The recommender's transformer on CPU: eager PyTorch, torch.compile, TorchScript, int8 dynamic
# quantization and (when installed) ONNX Runtime, with each one's parity against eager.
bench-runtime: install ## the recommender on CPU: eager, compile, TorchScript, int8, ONNX
	$(PY) -m benchmarks.bench_runtime

# What prediction logging costs a request (record() on the request path) and how fast it writes.
bench-predlog: install ## what prediction logging costs a request
	$(PY) -m benchmarks.bench_predlog

bench-latency-guard: install ## the gate's latency guard on make demo's champions, quiet and beside training
	$(PY) -m benchmarks.bench_latency_guard

bench-gate-calibration: install ## how often the gate promotes a candidate no better than its champion (make demo's evaluations)
	$(PY) -m benchmarks.bench_gate_calibration

# The GPU check's input (benchmarks/gpu_check.py): a generated shop's two feature sets, exported to
# .gpu/<name>.npz for a GPU host whose Python has torch, numpy, scikit-learn and PyYAML only.
# GPU_SHOP=big: 14 days of 70,000 events (1 million), 30,000 users, 8,000 items.
GPU_SHOP ?= demo
gpu-check-data: install ## export a generated shop's feature sets for benchmarks/gpu_check.py
	@set -e; home=$(CURDIR)/.gpu/$(GPU_SHOP)-home; rm -rf $$home; export SHOPML_HOME=$$home; \
	if [ "$(GPU_SHOP)" = big ]; then shop="--days 14 --events-per-day 70000 --initial-users 30000 --initial-items 8000 --seed 12"; days=14; \
	else shop="--days $(DEMO_DAYS) --events-per-day 5000 --initial-users 2000 --initial-items 1200 --seed 11"; days=$(DEMO_DAYS); fi; \
	$(PY) -m pipeline generate --start-date $(DEMO_START) $$shop > $$home.log 2>&1; \
	$(PY) -m pipeline run --start $(DEMO_START) --days $$days >> $$home.log 2>&1; \
	$(PY) -m pipeline features --model next_item >> $$home.log 2>&1; \
	$(PY) -m pipeline features --model purchase_propensity >> $$home.log 2>&1; \
	$(PY) -m benchmarks.gpu_check export --next-item $$(ls -d $$home/features/next_item/*) \
	  --propensity $$(ls -d $$home/features/purchase_propensity/*) --out .gpu/$(GPU_SHOP).npz

# Airflow's overhead on an end-to-end retrain (DAG wall time minus the stages' own time) on one
# million generated events, and the retrain's wall time.
bench-airflow: install ## Airflow's overhead on an end-to-end retrain of one million events
	$(PY) -m benchmarks.bench_airflow

bench-data: install ## ingest, validate and version throughput
	$(PY) -m benchmarks.bench_data

lint: install ## ruff format --check and ruff check over every folder
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install ## mypy on pipeline/ and models/ (strictness: pyproject.toml [tool.mypy])
	$(BIN)/mypy

docs: install ## build the docs site into site/ (warnings are errors, links checked)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install ## serve the docs site on http://127.0.0.1:8000, rebuilt on each change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

data: install ## download the public data samples that are missing (to SHOPML_DATA_DIR), checksums checked
	$(PY) -m benchmarks.data

# Re-resolve every dependency from pyproject.toml and pin the result.
lock: ## re-resolve every dependency from pyproject.toml and pin the result, every file hashed
	rm -rf /tmp/shopml-lock && $(PYTHON) -m venv /tmp/shopml-lock
	/tmp/shopml-lock/bin/pip install --quiet "pip==$(PIP_VERSION)" && /tmp/shopml-lock/bin/pip install --quiet -e '.[prod,docs,dev]'
	/tmp/shopml-lock/bin/pip freeze --all --exclude-editable > /tmp/shopml-lock/pins.txt
	/tmp/shopml-lock/bin/python tools/lock.py /tmp/shopml-lock/pins.txt

# The production profile's images. SHOPML_BASE=debian (the default where Docker Hub cannot be
# reached) builds them on Debian bookworm from the Debian mirror (docker/debian/); SHOPML_BASE=official
# uses python:3.11-slim and the compose file's official images.
SHOPML_BASE ?= debian
SHOPML_IMAGE_TAG ?= 0.1.0
images: install ## build the compose stack's images, every Python file by its locked hash
	$(PY) -m pip download --quiet --require-hashes --no-deps -r requirements.lock -d docker/wheels
	$(PY) -m pip download --quiet --require-hashes --no-deps -r requirements-torch-cpu.lock -d docker/wheels \
	  || $(PY) -m pip download --quiet --require-hashes --no-deps -r requirements-torch.lock -d docker/wheels
	@if [ "$(SHOPML_BASE)" = debian ]; then \
	  docker/debian/base.sh shopml-debian:bookworm \
	  && for img in python postgres redis; do \
	       DOCKER_BUILDKIT=0 docker build -q -f docker/debian/$$img.Dockerfile -t shopml-$$img:bookworm . || exit 1; done; \
	fi
	@if [ "$(SHOPML_BASE)" = debian ]; then py=shopml-python:bookworm; old=1; else py=python:3.11.14-slim-bookworm; old=; fi; \
	for img in airflow mlflow; do \
	  DOCKER_BUILDKIT=0 docker build -q -f docker/$$img.Dockerfile --build-arg PYTHON_IMAGE=$$py --build-arg PIP_NO_INDEX=1 \
	    --build-arg PIP_IGNORE_REQUIRES_PYTHON=$$old \
	    --build-arg SHOPML_GIT_COMMIT=$$(git rev-parse --short HEAD) -t shopml-$$img:$(SHOPML_IMAGE_TAG) . || exit 1; done
	@docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^shopml-'

test-compose: images ## start the production stack, retrain through Celery, serve, call, monitor, tear down
	SHOPML_BASE=$(SHOPML_BASE) $(PY) -m pytest -m compose tests/test_compose.py -p no:cacheprovider -x -s

audit: install ## the locked packages against PyPI's advisories (allowlist: .ci/audit-allowlist)
	$(BIN)/pip-audit --progress-spinner off --disable-pip --require-hashes \
	  -r requirements.lock -r requirements-torch.lock $$(sed -n 's/^\([A-Za-z0-9-]*\) .*/--ignore-vuln \1/p' .ci/audit-allowlist)

clean: ## remove the state folder (.state) and pytest's cache
	rm -rf $(SHOPML_HOME) .pytest_cache
