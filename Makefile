# Forge — the two commands: `make run` (set up and run) and `make test` (run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PKGS := caddy bubblewrap git prometheus chromium nftables iproute2 postgresql rsyslog rsyslog-gnutls
PYTEST_ARGS ?=
# make test's pytest workers (pytest-xdist). Each takes one test file at a time, whole and in its
# own order (--dist loadfile), files handed out longest first (tests/conftest.py): the e2e tests
# mostly wait on real processes, so they overlap well on 2 cores; 2 workers, not 3, because a
# third made timing-bound e2e tests fail under the contention. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
ARGS ?=

.PHONY: setup run test lint system-packages github-fixtures ui-vendor clean bench sim sim-selftest

setup: system-packages $(STAMP) github-fixtures ui-vendor

# GitHub's published OpenAPI description and webhook examples (npm @octokit/openapi and
# @octokit/webhooks-examples, pinned in tests/github/package.json): the fake GitHub the tests
# run against validates every request Forge sends against them. Installed into
# tests/github/node_modules (gitignored); npm itself comes from Debian when it is missing.
GH_FIXTURES := tests/github/node_modules/.installed
github-fixtures: $(GH_FIXTURES)

$(GH_FIXTURES): tests/github/package.json
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages: npm"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; \
	  else echo "warning: npm is missing (run make setup as root on Debian to install it)"; fi; }
	cd tests/github && npm install --no-audit --no-fund --silent
	touch $(GH_FIXTURES)

# The dashboard's chart library: npm uplot (pinned in forge/ui/npm/package.json), its dist script
# and stylesheet copied into forge/ui/vendor/ (gitignored), which the API serves as /ui/uPlot.*.
# Without them the dashboard still works and says why it shows no graphs.
UI_VENDOR := forge/ui/vendor/uPlot.iife.min.js
ui-vendor: $(UI_VENDOR)

$(UI_VENDOR): forge/ui/npm/package.json $(GH_FIXTURES)
	cd forge/ui/npm && npm install --no-audit --no-fund --silent
	mkdir -p forge/ui/vendor
	cp forge/ui/npm/node_modules/uplot/dist/uPlot.min.css forge/ui/vendor/
	cp forge/ui/npm/node_modules/uplot/dist/uPlot.iife.min.js forge/ui/vendor/

# Debian packages Forge drives for real: caddy (router), bwrap (sandbox), git (source),
# promtool (metrics/rules checks), chromium (dashboard browser test), nftables (libnftables:
# the apps' network fence and the service map), iproute2 (network namespaces) and postgresql
# (the second store backend: its tests and bench start a throwaway cluster of their own),
# rsyslog + rsyslog-gnutls (the log-drain e2e runs its own rsyslogd, TCP and RFC 5425 TLS, in
# the foreground on its own ports: the system's rsyslog is never started or touched).
system-packages:
	@missing=""; \
	command -v caddy >/dev/null || missing="$$missing caddy"; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v rsyslogd >/dev/null || missing="$$missing rsyslog"; \
	ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || missing="$$missing rsyslog-gnutls"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "warning: missing$$missing (run make setup as root on Debian to install them)"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: setup  # flags for forge up: make run ARGS='--data-dir /tmp/f --http-listen 127.0.0.1:8100'
	$(BIN)/forge up $(ARGS)

# Static checks over forge/: ruff's lint rules, ruff's formatting, mypy (settings in pyproject.toml).
lint: setup
	$(BIN)/ruff check forge tests bench
	$(BIN)/ruff format --check forge
	$(BIN)/mypy
	@if grep -rn --include='*.py' "type: ignore" forge; then echo "forge/ takes no '# type: ignore': type the code instead"; exit 1; fi

# A lint failure fails the tests: lint runs first (it takes seconds), then pytest: over
# TEST_WORKERS workers, then the tests marked `alone` (they measure the machine, e.g. a CPU
# share) by themselves; pytest's exit 5 there (PYTEST_ARGS selected none of them) is no failure.
test: setup lint
ifeq ($(TEST_WORKERS),0)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
else
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m 'not alone' $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]
endif

# The control-plane simulator (tests/sim): `make sim SEEDS=N` runs seeds 0..N-1 and prints how
# many passed; `make sim SEED=S` replays one seed and prints its trace (the same on every run);
# a failing seed prints a shrunk list of its actions and faults. FORGE_SIM_INCLUDE=all (or a
# comma-separated list) turns on the families of known, not yet fixed bugs (tests/sim/plan.py).
SEEDS ?= 100
SEED ?=
sim: setup
	@if [ -n "$(SEED)" ]; then $(BIN)/python -m tests.sim --seed $(SEED); \
	else $(BIN)/python -m tests.sim --seeds $(SEEDS); fi

sim-selftest: setup
	$(BIN)/python -m tests.sim --selftest

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV)
