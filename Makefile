# The two commands a newcomer needs: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: serve demo test test-fast install bench clean tools device-bundle

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

# Everything CI must prove: unit tests, the real servers, the browser, the editor, the benches.
test: $(VENV)/.installed-test tools
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

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
