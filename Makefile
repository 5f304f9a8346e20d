# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if needed, then runs the main job (a neuron-ablation sweep) on the
#               built-in default model, toy-llava: results table + HTML report in runs/demo
#   make test   creates .venv if needed, then checks lint and formatting (ruff) and runs the whole test suite
# TORCH is the torch requirement installed first: the CPU wheel by default. GPU users:
#   make test TORCH=   (keep the torch already in .venv, e.g. your CUDA build)

VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench figures clean

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(strip $(TORCH)),$(PY) -m pip install -q "$(TORCH)")
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hooks-mm sweep --out runs/demo --force

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

figures: $(STAMP)
	$(PY) scripts/readme_figures.py docs/img

clean:
	rm -rf $(VENV) .pytest_cache
