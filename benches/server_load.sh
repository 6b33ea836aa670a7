#!/usr/bin/env bash
# Load test of `hanga serve` with wrk: requests per second of GET /api/jobs/{id}, and the
# submit → start latency of jobs on an idle server (from the jobs' own created_at/started_at),
# beside GET /health as the framework's floor. Run: make bench-server.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
cargo build --quiet
data=$(mktemp -d)
./target/debug/hanga serve --port 0 --no-comfyui --data-dir "$data" --thumbnails-dir "$data/thumbnails" > "$data/stdout" 2> "$data/log" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data"' EXIT
until grep -q listening "$data/stdout" 2>/dev/null; do sleep 0.1; done
base=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$data/stdout")

submit() {
  curl -s -X POST "$base/api/generate" -H 'Content-Type: application/json' \
    -d '{"prompt": "latency", "width": 64, "height": 64, "steps": 1}' | sed 's/.*"job_id":"\([0-9a-f]*\)".*/\1/'
}
wait_done() {
  until curl -s "$base/api/jobs/$1" | grep -q '"status":"completed"'; do sleep 0.02; done
}

job=$(submit); wait_done "$job"
echo "== GET /health (framework floor), 2 threads, 32 connections, 10 s"
wrk -t2 -c32 -d10s "$base/health" | grep -E "Requests/sec|Latency"
echo "== GET /api/jobs/{id}, 2 threads, 32 connections, 10 s"
wrk -t2 -c32 -d10s "$base/api/jobs/$job" | grep -E "Requests/sec|Latency"

echo "== submit → start latency on an idle server (20 jobs, one at a time)"
latencies=()
for _ in $(seq 20); do
  id=$(submit); wait_done "$id"
  json=$(curl -s "$base/api/jobs/$id")
  created=$(echo "$json" | sed 's/.*"created_at":\([0-9]*\).*/\1/')
  started=$(echo "$json" | sed 's/.*"started_at":\([0-9]*\).*/\1/')
  latencies+=($((started - created)))
done
printf '%s\n' "${latencies[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, max %d ms (millisecond clock)\n", a[int((NR+1)/2)], a[NR]}'
