# Orchestrator: `make run` starts everything on the embedded default; `make test` runs the suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Development defaults; production sets these in the environment (see README, Configuration).
export DEBUG ?= true
export DJANGO_SETTINGS_MODULE := orchestrator.settings

.PHONY: run test bench venv migrate seed clean

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

migrate: $(STAMP)
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo --login-file var/admin-login.txt

# The Procfile's processes (web on 127.0.0.1:$PORT, default 8000; a Celery worker with beat in a
# thread; a local agent), output prefixed; one that dies is restarted with a growing wait; Ctrl-C
# stops all (README: make run). Once /healthz answers it prints the URLs and the seeded login.
RUN_URL = http://127.0.0.1:$(or $(PORT),8000)
run: seed
	$(BIN)/python -m supervise --procfile Procfile --ready-url $(RUN_URL)/healthz \
	  --ready-message "Ready. Dashboard: $(RUN_URL)/dashboard/   Admin: $(RUN_URL)/admin/   API docs: $(RUN_URL)/api/docs/" \
	  --ready-file var/admin-login.txt

# The whole suite: against PostgreSQL and Redis when DATABASE_URL / REDIS_URL are set, else SQLite.
# In PYTEST_WORKERS pytest-xdist processes: 3 on CI's 2 cores, as many tests wait for processes they
# started; each worker has its own test database and Redis database (tests/conftest.py).
# PYTEST_WORKERS=0 runs the suite in this one process.
PYTEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: migrate
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var/*.sqlite3* var/celery var/admin-login.txt test-artifacts
