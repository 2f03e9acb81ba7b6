# Every target creates its own virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test bench fuzz vectors clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@# optional: btrfs LZO decoding compiles against liblzo2; tests that need it skip without it
	-$(BIN)/pip install --quiet -e '.[lzo]' 2>/dev/null || echo "python-lzo not installed (needs liblzo2-dev): LZO decode tests will skip"
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run.py

FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/pip install --quiet -e '.[fuzz]'
	$(BIN)/python fuzz/fuzz_reader.py -max_total_time=$(FUZZ_SECONDS) fuzz/corpus

vectors: $(STAMP)
	$(BIN)/python spec/vectors/generate.py
	$(BIN)/python spec/vectors/generate_encrypted.py

clean:
	rm -rf $(VENV) .pytest_cache
