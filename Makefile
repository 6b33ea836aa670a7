# hanga — two commands do everything: `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test test-deps test-wgpu release bench bench-server gpu-bundle lease-dry-run check-gpu fmt

# Builds and starts the server on 127.0.0.1:8000 with the bundled demo model (random weights):
# Swagger UI at http://127.0.0.1:8000/docs. The dev profile (dependencies at opt-level 3)
# shares its build with `make test`; `make release` for a binary to ship.
run:
	$(CARGO) run -- serve --host 127.0.0.1 --port 8000 --default-model sdxl-tiny-demo

release:
	$(CARGO) build --release

# Unit, component, pipeline, CLI, server and browser tests on the tiny reference checkpoints
# (CPU), then schemathesis against `hanga serve` (tests/schemathesis/run.sh makes its
# virtualenv under .venv/).
test: test-deps
	$(CARGO) test --all-targets
	tests/schemathesis/run.sh target/debug/hanga

# Debian's Chromium and its WebDriver, for tests/browser.rs; ComfyUI client packages from
# PyPI, for tests/comfyui_server.rs; the OpenAI SDK, for tests/openai.rs.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-deps: .venv/comfyui-clients/.installed .venv/api-clients/.installed
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

# .venv/NAME-clients from tests/NAME_clients/requirements.txt.
.SECONDEXPANSION:
.venv/%/.installed: tests/$$(subst -,_,$$*)/requirements.txt
	python3 -m venv .venv/$*
	.venv/$*/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	touch $@

# `hanga bench --size small` on the CPU, beside diffusers on the same networks and inputs
# (benches/compare.py) when HANGA_BENCH_PYTHON (default python3) imports torch and diffusers;
# hanga's table alone otherwise. The dev build (dependencies at opt-level 3) is the test build.
HANGA_BENCH_PYTHON ?= python3
bench:
	$(CARGO) build
	@if $(HANGA_BENCH_PYTHON) -c 'import torch, diffusers' 2>/dev/null; then \
	  $(HANGA_BENCH_PYTHON) benches/compare.py --hanga target/debug/hanga --device cpu \
	    --dtype f32 --size small --runs 3 --warmup 1; \
	else \
	  echo "diffusers column skipped: $(HANGA_BENCH_PYTHON) cannot import torch and diffusers"; \
	  target/debug/hanga bench --device cpu --size small --runs 3 --warmup 1; \
	fi

# Requests per second and submit→start latency of `hanga serve`, with wrk.
bench-server:
	benches/server_load.sh

# The component and pipeline parity tests, and one server job, on burn's wgpu backend in f32
# (WGSL has no bf16). Without a GPU it runs on Mesa's lavapipe, a Vulkan device on the CPU.
test-wgpu:
	@if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mesa-vulkan-drivers libvulkan1; \
	fi
	$(CARGO) test --features wgpu --no-fail-fast --test parity
	$(CARGO) test --features wgpu --test server generate_follow_download_and_gallery

# What benches/gpu/lease.sh needs on a GPU machine. In .gpu/: hanga and the parity test binary,
# built with --features cuda for CUDA 13.0 (the H200 machines' driver 580; cudarc loads libcuda
# and libnvrtc at run time, so no CUDA is needed to build) in the `gpu` profile and folded by
# the linker (identical code once: --icf=all), xz-compressed, hanga in two halves; cases.json,
# the networks `hanga bench` times (compare.py's diffusers side runs without hanga);
# build-dir, the folder they were built in (the tests have its fixture and binary paths
# compiled in; lease.sh links it to the checkout). In .whl/site.tar.xz: the diffusers wheel and
# importlib_metadata (which that image lacks) unpacked, as xz (6.4 MB of wheels, 1.9 MB so).
# A lease call sends the tracked tree and what it carries, 64 MiB in all: the last lines check
# each of lease.sh's three calls. Build it in a worktree of the commit to measure
# (`git worktree add`), not in a tree being edited.
GPU_BUILD := CUDARC_CUDA_VERSION=13000 RUSTFLAGS="-C link-arg=-Wl,--icf=all"
gpu-bundle:
	rm -rf .gpu .whl && mkdir -p .gpu .whl/site
	$(GPU_BUILD) $(CARGO) test --profile gpu --features cuda --no-run --test parity \
	  --message-format=json | python3 -c 'import json, sys; \
	  [print(m["executable"]) for m in map(json.loads, sys.stdin) \
	   if m.get("executable") and m["target"]["kind"] == ["test"]]' \
	  | xargs -I{} cp {} .gpu/parity
	cp target/gpu/hanga .gpu/hanga
	.gpu/hanga bench --list >.gpu/cases.json
	xz -T0 -9 .gpu/hanga .gpu/parity
	split -n 2 -d .gpu/hanga.xz .gpu/hanga.xz. && rm .gpu/hanga.xz
	echo "$(CURDIR)" >.gpu/build-dir
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
	  diffusers==0.42.1 importlib_metadata==8.7.0
	cd .whl/site && for w in ../*.whl; do python3 -m zipfile -e "$$w" .; done
	tar -cf - -C .whl/site . | xz -9 -T0 >.whl/site.tar.xz && rm -rf .whl/site .whl/*.whl
	@tree=$$(git ls-files -z | xargs -0 du -bc | tail -1 | cut -f1); \
	for part in diffusers bench parity; do \
	  carried=$$(du -bc $$(benches/gpu/lease.sh --carry $$part) 2>/dev/null | tail -1 | cut -f1); \
	  echo "lease call $$part: tree $$tree + carried $$carried = $$((tree + carried)) of 67108864 bytes"; \
	  [ $$((tree + carried)) -le 67108864 ] || { echo "too big for one lease call"; exit 1; }; \
	done

# lease.sh on this machine: with no GPU it says which phases it skipped, and smoke-tests the
# binary on the CPU.
lease-dry-run:
	$(CARGO) build
	benches/gpu/lease.sh target/lease-dry-run

# The GPU backends must keep compiling even on machines without a GPU.
check-gpu:
	$(CARGO) check --features cuda,wgpu

fmt:
	$(CARGO) fmt --all
