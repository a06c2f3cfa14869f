# make quickstart: the main job (train a detector on synthetic shapes, CPU, minutes); make test: the test suite.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install quickstart test lint benchmark
install: $(STAMP)

# torch first: its CPU build; a dependency asking for plain torch would otherwise pull the multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "torch==2.13.0"
	$(VENV)/bin/python -m pip install -q -e ".[dev,export]"
	touch $@

quickstart: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_cpu_threads_per_process $(shell nproc) --num_machines 1 --mixed_precision no --dynamo_backend no recipes/finetune.py

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

benchmark: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_model_speed.py
