# The two commands a user needs: `make cookbook` and `make test` (both set up .venv first).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU wheel here; a GPU user installs their own torch into .venv first and it is kept.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PROFILE ?= cpu
# Idle OpenMP threads sleep instead of spinning (see dslib/env.py); set before torch loads.
export OMP_WAIT_POLICY ?= PASSIVE

# The MLflow UI server's own venv: mlflow (the package with the UI) pins pyarrow below the project's
UI_VENV ?= .venv-ui
UI_STAMP := $(UI_VENV)/.installed
BOOK ?= outputs/cookbook

.PHONY: setup ops ui-setup test unit notebooks cookbook book book-reference lab ui bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@start=$$SECONDS; echo "==> setup: $(VENV)"; \
	scripts/system-deps.sh; \
	test -x $(PY) || python3 -m venv $(VENV); \
	if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "==> keeping the installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else $(PY) -m pip install -q $(TORCH_SPEC) || exit 1; fi; \
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' || exit 1; \
	$(PY) -m pip check || exit 1; \
	touch $(STAMP); echo "==> setup done in $$((SECONDS - start)) s"

# DeepSpeed's C++ ops (cpu_adam, cpu_lion, pin_memory, async_io), built once per user and machine
# into ~/.cache/dslib/deepspeed-ops (DSLIB_OPS_CACHE): a second checkout reuses them
ops: setup
	@start=$$SECONDS; echo "==> DeepSpeed ops (built once per user and machine, cached by what they depend on)"; \
	$(PY) -m dslib.dist.ops build || echo "note: an op did not build; the runs that need it are skipped"; \
	echo "==> ops ready in $$((SECONDS - start)) s"

$(UI_STAMP): constraints-ui.txt
	@start=$$SECONDS; echo "==> MLflow UI venv: $(UI_VENV)"; \
	test -x $(UI_VENV)/bin/python || python3 -m venv $(UI_VENV); \
	$(UI_VENV)/bin/python -m pip install -q -c constraints-ui.txt mlflow || exit 1; \
	touch $(UI_STAMP); echo "==> MLflow UI venv done in $$((SECONDS - start)) s"

ui-setup: $(UI_STAMP)

test: setup ops ui-setup
	@start=$$SECONDS; $(PY) -m pytest -v --durations=15; rc=$$?; \
	echo "==> tests finished in $$((SECONDS - start)) s"; exit $$rc

unit: setup
	$(PY) -m pytest -v --ignore=tests/test_notebooks.py

notebooks: setup
	$(PY) -m pytest -v tests/test_notebooks.py

cookbook: setup ops
	$(VENV)/bin/dslib cookbook --profile $(PROFILE)

# The static site of the last `make cookbook`: $(BOOK)/site/index.html
book: setup
	$(VENV)/bin/dslib book $(BOOK)

# The reference build kept in docs/book (cpu profile), stamped with its commit: run it from a clean tree
book-reference: setup ops
	$(VENV)/bin/dslib cookbook --profile cpu --out outputs/reference
	$(VENV)/bin/dslib book outputs/reference --out docs/book

# JupyterLab on 127.0.0.1 with a token (printed), the project's settings and kernel
lab: setup
	$(PY) -m ipykernel install --sys-prefix --name dslib --display-name "dslib (.venv)" >/dev/null
	$(VENV)/bin/dslib lab

# The MLflow UI on 127.0.0.1:5000 over outputs/mlflow.db (or MLFLOW_TRACKING_URI)
ui: setup ui-setup
	$(VENV)/bin/dslib ui

# every benchmarks/bench_*.py, then one table of every ratio against its goal (benchmarks/summary.py)
bench: setup
	@for b in benchmarks/bench_*.py; do echo "==> $$b"; $(PY) $$b || exit 1; done; \
	$(PY) benchmarks/summary.py

clean:
	rm -rf outputs/cookbook outputs/reference outputs/run-* outputs/lab outputs/test-screenshots .pytest_cache
