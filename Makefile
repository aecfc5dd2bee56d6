# MangaAssist Serve — the two commands a newcomer runs: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run build test test-unit clean-venv promtool

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the pinned local CPU wheel (any other spec pulls a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## build the models and indexes when missing, then serve on http://127.0.0.1:8000 until Ctrl-C
run: $(STAMP)
	$(BIN)/mangaassist serve

build: $(STAMP)
	$(BIN)/mangaassist build
	$(BIN)/mangaassist index
	$(BIN)/mangaassist models list

## promtool (Debian's prometheus package) checks the alert rules and dashboard queries
promtool:
	command -v promtool >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

## the whole test suite
test: $(STAMP) promtool
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
