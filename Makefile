# Tidemark — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export CHROMEDRIVER := /usr/bin/chromedriver
PORT ?= 8787

.PHONY: setup build build-server fixtures foreign-stores test test-native test-browser test-e2e demo bench verify clean

setup:
	@./scripts/setup.sh

# The wasm package the demo page and the end-to-end tests import, built for size (Cargo.toml's
# wasm-release profile) and shrunk by wasm-opt from the npm `binaryen` package
# (scripts/wasm-opt.sh, cached: quick when nothing changed); js/build.mjs copies it into
# js/pkg with the embedded copy of the wasm (for bundlers that copy no assets).
build: setup
	wasm-pack build --profile wasm-release --no-opt --target web --out-dir pkg --no-pack
	./scripts/wasm-opt.sh pkg/tidemark_bg.wasm
	node js/build.mjs pkg js/pkg

test: setup test-native test-browser test-e2e

# The benches are built too (not run: `make bench` does), so a change that breaks them
# fails here rather than in the next `make bench`.
test-native: foreign-stores
	cargo test --workspace
	cargo build --workspace --benches

# The real foreign stores the gateway tests run (server/tests/foreign.rs, DESIGN §11):
# pouchdb-server 4.2.0 (a CouchDB-API server, run --in-memory) and json-server 0.17.4, pinned
# in tests/foreign/package-lock.json. Idempotent: installed again only when the lockfile is
# newer than what npm installed.
foreign-stores:
	@lock=tests/foreign/package-lock.json; dir=tests/foreign; \
		if [ ! -f $$dir/node_modules/.package-lock.json ] || [ $$lock -nt $$dir/node_modules/.package-lock.json ]; then \
			echo "foreign-stores: npm ci in $$dir"; (cd $$dir && npm ci --no-audit --no-fund) || exit 1; fi

# Real IndexedDB in headless Chromium through wasm-bindgen-test (`wasm-pack test --headless
# --chrome`; scripts/browser-tests.sh runs it again when the runner's page never loads).
test-browser:
	./scripts/browser-tests.sh

build-server: setup
	cargo build --release -p tidemark-server

# The fixture apps of the end-to-end tests (tests/e2e/fixtures/*): each folder's pinned
# bundler (Vite 5/6/7/8, esbuild, webpack, React) from its own lockfile. Idempotent: a folder
# is installed again only when its lockfile is newer than what npm installed.
fixtures:
	@for lock in tests/e2e/fixtures/*/package-lock.json; do dir=$${lock%/package-lock.json}; \
		if [ ! -f $$dir/node_modules/.package-lock.json ] || [ $$lock -nt $$dir/node_modules/.package-lock.json ]; then \
			echo "fixtures: npm ci in $$dir"; (cd $$dir && npm ci --no-audit --no-fund) || exit 1; fi; done

test-e2e: build build-server fixtures
	node --test --test-concurrency=1 tests/e2e/

demo: build build-server
	mkdir -p data
	./target/release/tidemark-server --listen 127.0.0.1:$(PORT) --data ./data --www ./www --pkg ./js

# Benchmarks (not part of `make test`): the native engine (criterion), then W1–W4, cold
# open, memory, sync and size in headless Chromium against raw IndexedDB, Dexie, PouchDB and
# RxDB; sync beside the physical limit (raw IndexedDB) and PouchDB replicating from
# pouchdb-server (started by bench/run.mjs); write-to-other-client latency; server load.
# Writes bench/results.json, bench/RESULTS.md and bench/charts/*.svg. BENCH_RUNS (5),
# BENCH_ONLY=browser,sync,... and BENCH_LIBS=raw,tidemark,... narrow it. The peers (and
# pouchdb-server) live in bench/node_modules only, pinned in bench/package-lock.json.
bench: build build-server
	@if [ ! -d bench/node_modules ] || [ bench/package-lock.json -nt bench/node_modules/.package-lock.json ]; then \
		echo "bench: installing the benchmark peers (bench/package-lock.json)"; \
		cd bench && npm ci --no-audit --no-fund; fi
	TIDEMARK_SERVER=$${TIDEMARK_SERVER:-$${CARGO_TARGET_DIR:-target}/release/tidemark-server} node bench/run.mjs

# The protocol model (model/README.md) at its larger scopes, the two-tab upgrade and every
# mutation; prints the tables of states explored, time and counterexamples (~30 min on 2
# cores; `make test` checks the small scopes). Then the simulation of the real engine over
# 20,000 seeds (~10 min; `make test` runs 2,000), and the simulation of the PostgreSQL
# position trackers over 1,000,000 cases (~1 min; `make test` runs 40,000).
verify:
	TIDEMARK_MODEL_PROGRESS=$${TIDEMARK_MODEL_PROGRESS:-300} cargo run -p tidemark-model --release --bin verify
	TIDEMARK_SEEDS=$${TIDEMARK_SEEDS:-20000} cargo test -p tidemark-testkit --test simulation -- --nocapture
	TIDEMARK_SIM_CASES=$${TIDEMARK_SIM_CASES:-1000000} cargo test --release -p tidemark-server --lib postgres::tracker::simulation

clean:
	cargo clean; rm -rf pkg node_modules
