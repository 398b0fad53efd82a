# Two commands: `make test` and `make demo`. Both build .venv on first use and reuse it
# while pyproject.toml is unchanged (the stamp file is keyed on its hash).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(shell sha256sum pyproject.toml | cut -c1-16)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test demo lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, so that pip on this kind of machine takes its local wheels; elsewhere the registry.
	$(BIN)/pip install -q "torch>=2.4" "torchvision>=0.19"
	$(BIN)/pip install -q -e ".[test]"
	rm -f $(VENV)/.stamp-*
	touch $@

test: venv
	$(BIN)/python -m pytest tests

demo: venv
	$(BIN)/python -m unirl.demo --out runs/demo

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs
