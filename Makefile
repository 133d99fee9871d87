# Tidemark — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export CHROMEDRIVER := /usr/bin/chromedriver
PORT ?= 8787

.PHONY: setup build build-server test test-native test-browser test-e2e demo bench clean

setup:
	@./scripts/setup.sh

# The wasm package the demo page and the end-to-end tests import.
build: setup
	wasm-pack build --release --target web --out-dir pkg --no-pack
	rm -rf js/pkg && mkdir -p js/pkg && cp -r pkg/tidemark.js pkg/tidemark_bg.wasm pkg/tidemark.d.ts pkg/snippets js/pkg/

test: setup test-native test-browser test-e2e

test-native:
	cargo test --workspace

# Real IndexedDB in headless Chromium through wasm-bindgen-test.
test-browser:
	wasm-pack test --headless --chrome

build-server: setup
	cargo build --release -p tidemark-server

test-e2e: build build-server
	node --test --test-concurrency=1 tests/e2e/

demo: build build-server
	mkdir -p data
	./target/release/tidemark-server --listen 127.0.0.1:$(PORT) --data ./data --www ./www --pkg ./js

bench: build
	@echo "benchmarks arrive with issue 6"

clean:
	cargo clean; rm -rf pkg node_modules
