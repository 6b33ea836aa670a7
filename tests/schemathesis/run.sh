#!/usr/bin/env bash
# API conformance run (issue #12): schemathesis with every check (schemathesis.toml) over the examples, coverage,
# fuzzing and stateful phases, against a real `hanga serve` on the demo model (CPU), with an API key.
#
#   tests/schemathesis/run.sh [path/to/hanga]        (default: target/debug/hanga)
#
# Environment:
#   VENV        the virtual environment with schemathesis (default .venv/schemathesis); created
#               and filled from requirements.txt when it has no `st`.
#   ST_SEED     seed of the generated cases (default: schemathesis.toml's).
#   ST_ARGS     extra arguments for `st run`, split on spaces, e.g. ST_ARGS="--include-path /api/jobs".
#   ST_REPORTS  folder to keep the reports in: JUnit, JSON and NDJSON (schemathesis), the
#               console output (schemathesis.log) and the server's log (default: a temp dir,
#               removed at the end).
#   HANGA_THREADS  CPU threads of the image runner (RAYON_NUM_THREADS; default 1, so that the
#               server and schemathesis keep a core while jobs run).
#
# Exits 0 only when schemathesis found nothing; prints one `schemathesis: ...` summary line last.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

hanga="${1:-target/debug/hanga}"
[[ "$hanga" = /* ]] || hanga="$root/$hanga"
venv="${VENV:-.venv/schemathesis}"
[[ "$venv" = /* ]] || venv="$root/$venv"
started=$(date +%s)

summary() { echo "schemathesis: $*"; }

if [[ ! -x "$hanga" ]]; then
  summary "ERROR: no hanga binary at $hanga (cargo build first)"
  exit 2
fi

if [[ ! -x "$venv/bin/st" ]]; then
  echo "creating $venv (tests/schemathesis/requirements.txt)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/hanga-schemathesis.XXXXXX")"
reports="${ST_REPORTS:-$work/reports}"
mkdir -p "$reports" "$work/data" "$work/thumbs"
server_pid=""

cleanup() {
  local rc=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# An admin key: every operation then needs it, and schemathesis' ignored_auth check sends each
# one without it and with a wrong one, expecting the documented 401.
key="$("$hanga" keys create --name schemathesis --scopes admin --data-dir "$work/data" 2>/dev/null)"

# The tiny safety checker of the parity fixture, so the NSFW routes and `nsfw_filter` run for real.
mkdir -p "$work/manifests"
checker="$root/tests/fixtures/components/safety_checker"
cat >"$work/manifests/tiny-checker.toml" <<EOF
id = "tiny-checker"
name = "Tiny safety checker (random weights)"
family = "safety-checker"
[files]
weights = "$checker/model.safetensors"
config = "$checker/config.json"
EOF

# The default model: the demo weights at 64² and 4 steps, so that operations which answer
# with their images (OpenAI's) answer within the run's timeouts.
sed -e 's/^id = "sdxl-tiny-demo"/id = "sdxl-tiny-quick"/' -e 's/^steps = .*/steps = 4/' \
  -e 's/^width = .*/width = 64/' -e 's/^height = .*/height = 64/' \
  -e "s#\.\./assets#$root/assets#" model_manifests/sdxl-tiny-demo.toml >"$work/manifests/quick.toml"

# The server: a fresh store, the demo models and the checker, no previews (SSE events stay
# small), a short queue (when full it answers the documented 429 instead of piling up work).
RAYON_NUM_THREADS="${HANGA_THREADS:-1}" RUST_LOG="${RUST_LOG:-warn}" \
  "$hanga" serve --device cpu --host 127.0.0.1 --port 0 --no-comfyui \
  --data-dir "$work/data" --thumbnails-dir "$work/thumbs" \
  --manifests "$work/manifests" --default-model sdxl-tiny-quick --preview-interval-ms 0 \
  --queue-capacity 64 \
  >"$reports/server.stdout" 2>"$reports/server.log" &
server_pid=$!

# The line comes once the socket is bound: from then on connections wait in its backlog.
port=""
for _ in $(seq 300); do
  port="$(sed -n 's#^hanga listening on http://[^:]*:\([0-9][0-9]*\).*#\1#p' "$reports/server.stdout" | head -n1)"
  [[ -n "$port" ]] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$port" ]]; then
  tail -n 30 "$reports/server.log" >&2 || true
  summary "ERROR: hanga did not start (no 'hanga listening on' line)"
  exit 2
fi
base="http://127.0.0.1:$port"
echo "hanga serving at $base (pid $server_pid); log: $reports/server.log" >&2

# schemathesis runs in the temp dir, so that nothing it writes lands in the repository.
set +e
(
  cd "$work"
  # shellcheck disable=SC2086
  SCHEMATHESIS_HOOKS="$here/hooks.py" "$venv/bin/st" --no-color --config-file "$here/schemathesis.toml" \
    run "$base/openapi.json" \
    --header "Authorization: Bearer $key" \
    --phases examples,coverage,fuzzing,stateful \
    ${ST_SEED:+--seed "$ST_SEED"} \
    --report junit,json,ndjson --report-dir "$reports" \
    ${ST_ARGS:-}
) 2>&1 | tee "$reports/schemathesis.log"
st_rc=${PIPESTATUS[0]}
set -e

elapsed=$(( $(date +%s) - started ))
counts="$("$venv/bin/python" - "$reports" <<'EOF' 2>/dev/null || true
import glob, json, sys
r = json.load(open(sorted(glob.glob(sys.argv[1] + "/json-*.json"))[-1]))
t, ops = r["test_cases"], r["operations"]
phases = " ".join(f"{k}:{v['status']}" for k, v in r["phases"].items())
print(f"{ops['tested']}/{ops['selected']} operations, {t['generated']} test cases, "
      f"{t['unique_failures']} unique failures, {len(r['errors'])} errors ({phases})")
EOF
)"
if ! kill -0 "$server_pid" 2>/dev/null; then
  tail -n 30 "$reports/server.log" >&2 || true
  summary "FAIL: hanga exited during the run; ${counts:-no report}; ${elapsed}s"
  exit 1
fi
if [[ $st_rc -eq 0 ]]; then
  summary "PASS: ${counts:-no report}; ${elapsed}s"
else
  summary "FAIL (st exit $st_rc): ${counts:-no report}; ${elapsed}s"
fi
# The plain closing line a CI log reader counts: test cases without and with failures.
"$venv/bin/python" - "$reports" <<'EOF' 2>/dev/null || true
import glob, json, sys
t = json.load(open(sorted(glob.glob(sys.argv[1] + "/json-*.json"))[-1]))["test_cases"]
print(f"schemathesis: {t['generated'] - t['with_failures']} passed, {t['with_failures']} failed")
EOF
exit "$st_rc"
