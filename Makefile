# hanga — two commands do everything: `make run` and `make test`.
CARGO ?= cargo
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test build bench check-gpu fmt

# Builds and generates an image with the bundled demo model (random weights) — the HTTP
# server (`hanga serve`) is issue #3.
run: build
	./target/release/hanga generate --model sdxl-tiny-demo --prompt "a watercolor fox in the snow" --seed 42 -o demo.png

build:
	$(CARGO) build --release

# Unit, component, pipeline and CLI tests on the tiny reference checkpoints (CPU).
test:
	$(CARGO) test --all-targets

# UNet step and VAE decode timings on CPU (see benches/README.md).
bench:
	$(CARGO) bench --bench denoise

# The GPU backends must keep compiling even on machines without a GPU.
check-gpu:
	$(CARGO) check --features cuda,wgpu

fmt:
	$(CARGO) fmt --all
