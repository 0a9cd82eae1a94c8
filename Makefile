# Everything a newcomer needs: `make serve` and `make test` set the project up when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= $(or $(PTQ4VM_HOST),127.0.0.1)
PORT   ?= $(or $(PTQ4VM_PORT),8000)
# onnxruntime-web for the browser page's "this tab" mode (DESIGN 4.5): the npm registry's
# package, version and tarball hash pinned in the script, its WebAssembly build copied into the
# static files the server serves (clients/web/vendor/, ignored by git). A new pin re-vendors.
ORT_WEB_SCRIPT  := clients/vendor-onnxruntime-web.sh
ORT_WEB_VERSION := $(shell sed -n 's/^VERSION=//p' $(ORT_WEB_SCRIPT))
ORT_WEB_DIR     := clients/web/vendor/onnxruntime-web
ORT_WEB_STAMP   := $(ORT_WEB_DIR)/.version-$(ORT_WEB_VERSION)

.PHONY: setup serve test test-slow bench bench-mediapipe lint format clean

$(STAMP): pyproject.toml constraints.txt clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned on its own first: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	$(PY) -m pip install --quiet -c constraints.txt -e 'clients/python[images,browser-tests,webrtc]'
	touch $(STAMP)

$(ORT_WEB_STAMP): $(ORT_WEB_SCRIPT)
	@command -v npm >/dev/null || { echo "setup: npm missing: cannot vendor onnxruntime-web; the page's tab mode and its browser tests will fail"; exit 0; }; \
	sh $(ORT_WEB_SCRIPT) $(ORT_WEB_DIR) build/onnxruntime-web

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

# MediaPipe's selfie segmentation as a benchmark peer (benchmarks/engine.py --mediapipe): its
# wheel wants numpy < 2 and opencv-contrib-python, so it gets an environment of its own, apart
# from the project's; nothing in `make test` needs it.
MEDIAPIPE_VENV := .venv-mediapipe
$(MEDIAPIPE_VENV)/.installed:
	test -x $(MEDIAPIPE_VENV)/bin/python || $(PYTHON) -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet mediapipe==0.10.21
	touch $@

bench-mediapipe: $(MEDIAPIPE_VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy ptq4vm_core server tests benchmarks clients
	@# The layers (STYLE 15, docs/architecture.md): contracts in pyproject.toml [tool.importlinter].
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(MEDIAPIPE_VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
