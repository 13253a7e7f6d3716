# Cairn: two commands for a new user — `make run` and `make test`.
#
#   make deps    install build/test dependencies (apt, rustup targets); idempotent
#   make build   device binaries (static musl) for ARCH and the host tool
#   make image   out/$(ARCH)/cairn.img            [ARCH=x86_64|aarch64] [VERSION=...]
#   make run     build the image and boot it in QEMU, console attached (Ctrl-A X quits)
#   make test    unit tests, lints, API tests with the Python client, images
#                for both arches, end-to-end QEMU tests
#   make bench   boot/memory/size figures vs a systemd baseline; API server,
#                scheduler and controller figures
#   make clean   remove out/ (the cargo target dir and the component cache stay)

ARCH ?= x86_64
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
export CARGO_TARGET_DIR ?= $(CURDIR)/target
export CAIRN_CACHE ?= $(CURDIR)/.cache/components
# A venv (with Debian's site-packages visible) holding the Python kubernetes client.
export CAIRN_VENV ?= $(CURDIR)/.cache/venv


rust_target = $(1)-unknown-linux-musl
TOOL := $(CARGO_TARGET_DIR)/debug/cairn-image
export CAIRN_IMAGE_TOOL := $(TOOL)

.PHONY: deps build tool image images run test unit lint api e2e bench clean

deps:
	@bash .ci/deps

tool: deps
	cargo build -p cairn-image

# Each device binary is built once per target, in release (size matters).
build-%: deps
	cargo build --release --target $(call rust_target,$*) -p cairn-init -p cairn

build: build-$(ARCH) tool

image-%: build-% tool
	$(TOOL) build --arch $* --version $(VERSION) --cache $(CAIRN_CACHE) \
	  --init $(CARGO_TARGET_DIR)/$(call rust_target,$*)/release/cairn-init \
	  --cairn $(CARGO_TARGET_DIR)/$(call rust_target,$*)/release/cairn \
	  --pause $(CARGO_TARGET_DIR)/$(call rust_target,$*)/release/cairn-pause \
	  --out out/$*/cairn.img

image: image-$(ARCH)

images: image-x86_64 image-aarch64

# make run: the image with a generated config (out/$(ARCH)/config/, made once
# by `cairn-image config init` and reused, so the kubeconfig stays valid), the
# API forwarded to 127.0.0.1:$(API_PORT). The tests' out/$(ARCH)/cairn.img is
# left as built; the booted copy is out/$(ARCH)/run.img.
API_PORT ?= 6443
RUN_CONFIG = out/$(ARCH)/config

$(RUN_CONFIG)/config.toml: | tool
	$(TOOL) config init --server https://127.0.0.1:$(API_PORT) $(RUN_CONFIG)

run: image $(RUN_CONFIG)/config.toml
	$(TOOL) config validate $(RUN_CONFIG)/config.toml
	sed -i 's#server: https://127.0.0.1:[0-9]*$$#server: https://127.0.0.1:$(API_PORT)#' $(RUN_CONFIG)/kubeconfig.yaml
	cp --sparse=always out/$(ARCH)/cairn.img out/$(ARCH)/run.img
	$(TOOL) config write out/$(ARCH)/run.img $(RUN_CONFIG)/config.toml
	@echo
	@echo "Booting out/$(ARCH)/run.img in QEMU. Ctrl-A X quits."
	@echo "Edit $(RUN_CONFIG)/config.toml to configure the device (checked on every run)."
	@echo "When 'cairn: ready' appears, from another terminal:"
	@echo "  export KUBECONFIG=$(CURDIR)/$(RUN_CONFIG)/kubeconfig.yaml"
	@echo "  kubectl get ns"
	@echo
	qemu/run out/$(ARCH)/run.img --arch $(ARCH) --forward $(API_PORT):6443

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: deps
	cargo test --workspace

# The host `cairn server` driven by the official Python client (tests/api).
api: deps
	cargo build -p cairn
	$(CAIRN_VENV)/bin/python -m pytest -c tests/pytest.ini tests/api

e2e: images
	/usr/bin/python3 -m pytest -c tests/pytest.ini tests --ignore=tests/api -n 2

test: lint unit api e2e

bench: images
	cargo build --release -p cairn --bin cairn --example api_load --example ctl_load
	/usr/bin/python3 tests/bench.py
	/usr/bin/python3 tests/bench_api.py
	/usr/bin/python3 tests/bench_controllers.py
	$(CAIRN_VENV)/bin/python tests/bench_agent.py

clean:
	rm -rf out
