# Each target sets up .venv on its own (created when missing, reinstalled when setup.py changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m histaug_tf.experiment --flagfile=configs/experiment_demo.flags

# everything, including the integration tests that start a local SLURM (root; see tests/README.md)
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile tests

# no slow tests, no services: never starts SLURM (HISTAUG_REQUIRE_SLURM=0 overrides the CI switch)
test-fast: $(STAMP)
	HISTAUG_REQUIRE_SLURM=0 $(PY) -m pytest -n 2 --dist loadfile -m "not slow and not integration" tests

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info
