# tinyldm — the two quick-start commands and their friends.
#   make demo      install, then run the main job end to end on the built-in data (64×64, ~5–11 min on 2 cores)
#   make demo-256  the same in the users' setting: 31 × 150 images at 256×256, f = 8 autoencoder (compact preset)
#   make test      install, then lint (ruff) and run the test suite (slow tests deselected)
#   make test-all  the same, slow tests included
# torch is installed only when `import torch` fails, from $(TORCH_SPEC); CI sets TORCH_SPEC=torch==2.13.0
# (a local CPU build). A bare `torch` may pull a multi-GB CUDA build.
PYTHON ?= python3
TORCH_SPEC ?= torch
PYTEST_ARGS ?=

.PHONY: install test-data test test-all demo demo-256 lint bench clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	@$(PYTHON) -c "import tinyldm, pytest, ruff, einops, safetensors, tqdm, PIL" 2>/dev/null || $(PYTHON) -m pip install -e ".[test]"

# OpenAI's CLIP vocabulary (MIT) for the tokenizer's parity test, from the package that ships it; --no-deps: only
# its data file is read (the package itself, which needs torchvision, is never imported). Without it the test skips.
test-data:
	@$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('clip') is None)" 2>/dev/null \
		|| $(PYTHON) -m pip install --no-deps "clip-anytorch==2.6.0" \
		|| echo "clip-anytorch not installed: the tokenizer's real-vocabulary test will skip"

lint: install
	$(PYTHON) -m ruff check .

test: install test-data lint
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

test-all: install test-data lint
	$(PYTHON) -m pytest -q -m "" $(PYTEST_ARGS)

demo: install
	$(PYTHON) demo.py

demo-256: install
	$(PYTHON) demo.py --preset compact

bench: install
	$(PYTHON) benchmarks/bench_autoencoder.py
	$(PYTHON) benchmarks/bench_backbones.py
	$(PYTHON) benchmarks/bench_samplers.py

clean:
	rm -rf runs .pytest_cache .ruff_cache *.egg-info
