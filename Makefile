# Everything a newcomer needs: `make serve` and `make test` set the project up when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= $(or $(PTQ4VM_HOST),127.0.0.1)
PORT   ?= $(or $(PTQ4VM_PORT),8000)
# onnxruntime-web for the browser page's "this tab" mode (DESIGN 4.5): the npm registry's
# package at this version and tarball hash, its WebAssembly build copied into the static files
# the server serves (clients/web/vendor/, ignored by git). Bumping the version re-vendors.
ORT_WEB_VERSION := 1.30.0
ORT_WEB_SHA512  := ab4cbe26baedba45d2cec05610c71c55fa97db92d19a8b171c5f8269126683ca590a5cdc57bb2f35ce2b298de32f4d956fb42644c0ecd528a0a91e025c07ca61
ORT_WEB_BUILD   := build/onnxruntime-web
ORT_WEB_DIR     := clients/web/vendor/onnxruntime-web
ORT_WEB_STAMP   := $(ORT_WEB_DIR)/.version-$(ORT_WEB_VERSION)
ORT_WEB_FILES   := ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm

.PHONY: setup serve test test-slow bench lint format clean

$(STAMP): pyproject.toml constraints.txt clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned on its own first: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	$(PY) -m pip install --quiet -c constraints.txt -e 'clients/python[images,browser-tests]'
	touch $(STAMP)

$(ORT_WEB_STAMP):
	@command -v npm >/dev/null || { echo "setup: npm missing: cannot vendor onnxruntime-web; the page's tab mode and its browser tests will fail"; exit 0; }; \
	set -e; rm -rf $(ORT_WEB_BUILD) $(ORT_WEB_DIR); mkdir -p $(ORT_WEB_BUILD) $(ORT_WEB_DIR); \
	(cd $(ORT_WEB_BUILD) && npm pack --silent onnxruntime-web@$(ORT_WEB_VERSION) >/dev/null); \
	echo "$(ORT_WEB_SHA512)  $(ORT_WEB_BUILD)/onnxruntime-web-$(ORT_WEB_VERSION).tgz" | sha512sum -c --quiet; \
	tar -xzf $(ORT_WEB_BUILD)/onnxruntime-web-$(ORT_WEB_VERSION).tgz -C $(ORT_WEB_BUILD); \
	cp $(addprefix $(ORT_WEB_BUILD)/package/dist/,$(ORT_WEB_FILES)) $(ORT_WEB_BUILD)/package/package.json $(ORT_WEB_DIR)/; \
	rm -rf $(ORT_WEB_BUILD); touch $@; echo "setup: vendored onnxruntime-web $(ORT_WEB_VERSION) into $(ORT_WEB_DIR)"

setup: $(STAMP) $(ORT_WEB_STAMP)
	$(VENV)/bin/ptq4vm fetch --quiet
	@# Headless Chromium for the browser test (Debian's package; Playwright never downloads one).
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "setup: chromium missing and not installable here (needs apt and root); the browser test (-m browser) will fail"; }
	@# Debian's nginx for the routing test (tests/deploy/test_nginx.py starts its own on loopback).
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& (apt-get update -qq && apt-get install -y -qq nginx) \
		|| echo "setup: nginx missing and not installable here (needs apt and root); tests/deploy/test_nginx.py will fail"; }
	@# Debian's firefox-esr for the Firefox browser test (driven over Marionette; no geckodriver).
	@command -v firefox-esr >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& (apt-get update -qq && apt-get install -y -qq firefox-esr) \
		|| echo "setup: firefox-esr missing and not installable here (needs apt and root); the Firefox browser test (-m browser) will fail"; }

serve: setup
	$(VENV)/bin/ptq4vm serve --host $(HOST) --port $(PORT)

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

bench: setup
	$(PY) benchmarks/engines.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy ptq4vm_core server tests benchmarks clients

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
