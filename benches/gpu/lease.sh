#!/usr/bin/env bash
# A whole GPU check inside one short lease of a GPU machine. Run it from the repository root
# there, with the bundle `make gpu-bundle` made here (.gpu/: hanga.xz in two halves, parity.xz,
# cases.json, build-dir; .whl/site.tar.xz: diffusers and what that machine's Python lacks).
# A call sends the tracked tree and what it carries, 64 MiB in all, which leaves room for about
# one binary beside the fixtures, so the check is three calls on one warm machine (what an
# earlier call carried stays there):
#
#   benches/gpu/lease.sh OUT_DIR diffusers   then   bench   then   parity
#
# each carrying what `benches/gpu/lease.sh --carry PART` prints (bench also the diffusers
# call's OUT_DIR/diffusers.json, copied to .gpu/diffusers.json). `all`, the default, runs every
# part where everything is there. Phases, each under its own timeout, each logging to
# OUT_DIR/<phase>.log:
#   probe      the GPU, driver, CUDA libraries, glibc, torch
#   diffusers  benches/compare.py's diffusers side (random weights, SDPA, CUDA events)
#   hanga      `hanga bench` on cuda, then compare.py joins both into OUT_DIR/compare.json
#   serve      one SDXL job through `hanga serve` and its SSE stream
#   parity     the component and pipeline parity tests on cuda (f32)
#   caches     burn's autotune cache, cubecl's kernel cache and the driver's JIT cache, as
#              OUT_DIR/caches.tgz, for the next lease to start from (same binary, same GPU)
# Without a GPU (no working nvidia-smi) every device phase says it is skipped, and hanga is
# smoke-tested on the CPU instead (`hanga bench --size small`).
set -u
if [ "${1:-}" = --carry ]; then
  case ${2:-} in
    diffusers) echo .whl/site.tar.xz .gpu/cases.json .gpu/hanga.xz.00 ;;
    bench) echo .gpu/hanga.xz.01 .gpu/build-dir .gpu/diffusers.json ;;
    parity) echo .gpu/parity.xz .gpu/build-dir ;;
    *) echo "lease.sh --carry diffusers|bench|parity" >&2; exit 2 ;;
  esac
  exit 0
fi
OUT=${1:?usage: benches/gpu/lease.sh OUT_DIR [diffusers|bench|parity|all]}
PART=${2:-all}
case $PART in diffusers | bench | parity | all) ;;
  *) echo "lease.sh: the part is diffusers, bench, parity or all" >&2; exit 2 ;;
esac
runs() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUNDLE=${HANGA_GPU_BUNDLE:-.gpu}
mkdir -p "$BUNDLE/bin"
# hanga travels in two halves, one per call; joined once both are here.
if [ -e "$BUNDLE/hanga.xz.00" ] && [ -e "$BUNDLE/hanga.xz.01" ]; then
  cat "$BUNDLE/hanga.xz.00" "$BUNDLE/hanga.xz.01" >"$BUNDLE/hanga.xz"
fi
for packed in "$BUNDLE"/*.xz; do
  [ -e "$packed" ] || continue
  unpacked=$BUNDLE/bin/$(basename "$packed" .xz)
  xz -dc "$packed" >"$unpacked" && chmod +x "$unpacked"
done
HANGA=$BUNDLE/bin/hanga
[ -x "$HANGA" ] || HANGA=target/debug/hanga
PARITY=$BUNDLE/bin/parity
# The tests read their fixtures, and run hanga, where they were built: that folder becomes a
# link to this checkout, and its target/gpu/hanga the bundle's.
if [ -f "$BUNDLE/build-dir" ]; then
  BUILT_IN=$(cat "$BUNDLE/build-dir")
  if [ "$BUILT_IN" != "$PWD" ] && [ ! -e "$BUILT_IN" ]; then
    mkdir -p "$(dirname "$BUILT_IN")" && ln -s "$PWD" "$BUILT_IN"
  fi
  [ -x "$BUNDLE/bin/hanga" ] && mkdir -p target/gpu && ln -sf "$PWD/$BUNDLE/bin/hanga" target/gpu/hanga
fi
export OUT BUNDLE HANGA PARITY
STARTED=$(date +%s)

# phase NAME SECONDS COMMAND...: runs COMMAND under a timeout, its output to the terminal and
# to OUT/NAME.log, and reports how it ended.
phase() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name (at most ${limit} s)"
  local start=$(date +%s)
  # A shell function of this script runs in a child bash that is given its definition.
  if declare -F "$1" >/dev/null; then
    set -- bash -c "$(declare -f "$1"); $(printf '%q ' "$@")"
  fi
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - start ))
  [ "$rc" = 124 ] && echo "=== $name: TIMED OUT after ${took} s" || echo "=== $name: exit $rc after ${took} s"
  echo "$name $rc $took" >>"$OUT/phases.txt"
}

skipped() {
  echo "=== $1: skipped ($2)" | tee "$OUT/$1.log"
  echo "$1 skipped 0" >>"$OUT/phases.txt"
}

: >"$OUT/phases.txt"
if nvidia-smi -L >/dev/null 2>&1; then GPU=yes; else GPU=; fi

probe() {
  uname -a
  ldd --version | head -1
  nvidia-smi || echo "nvidia-smi: none"
  ldconfig -p | grep -E 'libcuda\.so|libnvrtc' || echo "no libcuda / libnvrtc in ldconfig"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' \
    || echo "python3 has no torch"
  "$HANGA" --version
  ls -l "$HANGA" "$BUNDLE" 2>/dev/null
}
phase probe 30 probe

if [ -z "$GPU" ]; then
  for p in diffusers hanga compare serve parity caches; do skipped $p "no GPU: nvidia-smi finds none"; done
  echo "=== CPU smoke of hanga instead"
  phase cpu-smoke 120 "$HANGA" bench --device cpu --size small --runs 1 --warmup 0 --json "$OUT/hanga-cpu.json"
  echo "lease.sh: no GPU; device phases skipped; $(( $(date +%s) - STARTED )) s in all"
  exit 0
fi

# NVRTC and the CUDA runtime come with torch's wheels where the system has none.
if ! ldconfig -p | grep -q libnvrtc; then
  for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, q, "lib") for p in nvidia.__path__ for q in os.listdir(p)))' 2>/dev/null); do
    LD_LIBRARY_PATH=$d:${LD_LIBRARY_PATH:-}
  done
  export LD_LIBRARY_PATH
fi
# Caches: autotune results and compiled kernels (cubecl.toml), the driver's PTX→SASS cache.
CACHE=/tmp/hanga-gpu-cache
mkdir -p "$CACHE"
[ -f "$BUNDLE/caches.tgz" ] && tar -xzf "$BUNDLE/caches.tgz" -C "$CACHE"
if [ ! -e cubecl.toml ]; then
  printf '[autotune]\ncache = { file = "%s/autotune" }\n[compilation]\ncache = { file = "%s/kernels" }\n' "$CACHE" "$CACHE" >cubecl.toml
  trap 'rm -f cubecl.toml' EXIT
fi
export CUDA_CACHE_PATH=$CACHE/nv CUDA_CACHE_MAXSIZE=4294967296
# The wheels' contents, unpacked as pip --target would (they are pure Python).
if [ -f .whl/site.tar.xz ]; then
  mkdir -p /tmp/site && tar -xJf .whl/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/gpu-memory.csv" &
SAMPLER=$!

export PYTHONUNBUFFERED=1
serve() {
  local data=/tmp/hanga-serve-data
  rm -rf "$data"
  "$HANGA" serve --device cuda --port 8000 --no-comfyui --data-dir "$data" \
    --default-model sdxl-tiny-demo &
  local server=$!
  python3 benches/gpu/serve_job.py --port 8000 --width 1024 --height 1024 --steps 8
  local rc=$?
  kill $server
  return $rc
}
if runs diffusers; then
  CASES=$BUNDLE/cases.json
  [ -f "$CASES" ] || { "$HANGA" bench --list >"$OUT/cases.json" && CASES=$OUT/cases.json; }
  phase diffusers 150 python3 benches/compare.py --cases-json "$CASES" --device cuda --dtype bf16 \
    --diffusers-only --out "$OUT/diffusers.json"
fi
if runs bench; then
  phase hanga 240 "$HANGA" bench --device cuda --dtype bf16 --json "$OUT/hanga.json"
  DIFFUSERS=$OUT/diffusers.json
  [ -f "$DIFFUSERS" ] || DIFFUSERS=$BUNDLE/diffusers.json
  if [ -f "$DIFFUSERS" ]; then
    phase compare 20 python3 benches/compare.py --hanga "$HANGA" --device cuda --dtype bf16 \
      --hanga-json "$OUT/hanga.json" --diffusers-json "$DIFFUSERS" --out "$OUT/compare.json"
  else
    skipped compare "no diffusers.json: run the diffusers part first, carry its output"
  fi
  phase serve 60 serve
fi
if runs parity; then
  if [ -x "$PARITY" ]; then
    phase parity 240 "$PARITY" --test-threads 1
  else
    skipped parity "no $PARITY: carry .gpu/parity.xz"
  fi
fi

kill $SAMPLER 2>/dev/null
phase caches 30 tar -czf "$OUT/caches.tgz" -C "$CACHE" .
echo "lease.sh: done in $(( $(date +%s) - STARTED )) s"
cat "$OUT/phases.txt"
