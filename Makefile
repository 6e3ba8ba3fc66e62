# Two set-up commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-component test-mesh lint typecheck bench clean nginx datastores pebble

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# A local mesh running the example projects, deployed from git repositories under .demo/
# (made here, with meshd's hook); `meshctl down` ends it.
# On Docker the examples run from an image built FROM scratch with a static busybox.
demo: $(STAMP) examples/app/busybox nginx datastores
	$(BIN)/meshctl up --runtime $$([ -f examples/app/busybox ] && echo auto || echo process)
	$(BIN)/python examples/demo_repos.py
	$(BIN)/meshctl publish examples/projects.csv --wait --timeout 300
	$(BIN)/meshctl hook install .demo/hostomatic.git
	$(BIN)/meshctl hook install .demo/digitalpixo.git
	$(BIN)/meshctl status
	$(BIN)/python examples/request.py
	$(BIN)/meshctl dashboard --new-password
	@echo "The mesh keeps running. Explore: .venv/bin/meshctl status --watch | events --follow"
	@echo "Deploy a change: README.md, section 'Deploy a change'"
	@echo "Stop it: .venv/bin/meshctl down (the datastores' data is kept; --delete-data removes it too)"

# Debian's busybox-static, installed when missing and run as root; without it the demo runs
# its services as processes.
examples/app/busybox:
	@if [ -f /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; then \
		cp /bin/busybox $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -qq busybox-static >/dev/null && cp /bin/busybox $@; \
	else \
		echo "No static busybox (Debian/Ubuntu: apt-get install busybox-static):" \
			"the demo runs its services as processes."; \
	fi

# The entry point's load balancer: Debian's nginx-light, installed when missing and run as
# root; without it the mesh runs but has no entry point (`meshctl events` says so).
nginx:
	@if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -qq nginx-light >/dev/null; \
		else \
			echo "No nginx (Debian/Ubuntu: apt-get install nginx-light): no entry point."; \
		fi; \
	fi

# Debian's pebble, the ACME CA (with its DNS server pebble-challtestsrv) that the TLS tests
# order certificates from (tests/support/pebble.py); installed when missing and run as root.
pebble:
	@if ! command -v pebble >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -qq pebble >/dev/null; \
		else \
			echo "No pebble (Debian/Ubuntu: apt-get install pebble): the TLS tests skip."; \
		fi; \
	fi

# Debian's PostgreSQL and Redis, which the process runtime runs for the built-in datastores;
# their packages' own default servers are stopped (they would hold ports the mesh hands out).
datastores:
	@deploy/host-datastores

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The tiers run cheapest first, so that a broken unit stops the run in seconds.
test: lint typecheck test-unit pebble test-component test-mesh

# Unit and component tests share no ports or names between workers (each starts its own
# servers on free ports): two workers halve the component tier (4:33 to 2:40 on two cores).
# TIER_ARGS= runs them one by one.
TIER_ARGS ?= -n 2
test-unit: $(STAMP)
	$(BIN)/pytest -m unit $(TIER_ARGS)

test-component: $(STAMP)
	$(BIN)/pytest -m component $(TIER_ARGS)

# Mesh tests run side by side (each mesh has its own name, addresses and ports), two at a
# time: three on two cores (load ~7) starved agents into false failures and missed deadlines
# in most full runs. MESH_ARGS= runs them one by one. The few marked `alone` (the seed's four
# droplets and fifty instances) run afterwards by themselves.
MESH_ARGS ?= -n 2
test-mesh: $(STAMP)
	$(BIN)/pytest -m "mesh and not alone" $(MESH_ARGS)
	$(BIN)/pytest -m "mesh and alone"

bench: $(STAMP)
	$(BIN)/python bench/plan.py
	$(BIN)/python bench/converge.py
	$(BIN)/python bench/instance_start.py
	$(BIN)/python bench/lb.py
	$(BIN)/python bench/detect.py
	$(BIN)/python bench/data.py
	$(BIN)/python bench/observe.py
	$(BIN)/python bench/tls.py
	$(BIN)/python bench/recompute.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
