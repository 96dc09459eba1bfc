# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch: from the wheels on this project's machines, else from PyTorch's CPU
# index (PyPI's Linux wheel is the multi-GB CUDA build). On a GPU machine set TORCH_SPEC to a
# CUDA build's requirement.
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" 2>/dev/null \
		|| $(PY) -m pip install -q "$(TORCH_SPEC)" --extra-index-url $(TORCH_CPU_INDEX)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m pipelines.demo

test: $(VENV)/.installed
	$(VENV)/bin/ruff check anomaly pipelines tests benchmarks deploy
	bash tests/system-deps.sh
	$(PY) -m pytest -q

bench: $(VENV)/.bench
	@echo "see BENCHMARKS.md for the commands"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-output
