#!/usr/bin/env bash
# HTTP benchmark of `tally serve`: latency at concurrency 1, throughput at concurrency 32 (every
# invocation's usage record durably committed before its answer), and the first invocation
# after a restart (precompiled cache). Needs `wrk` (Debian package) and a release build:
#   cargo build --release && bash bench/http/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 2; }
TALLY_BIN=${TALLY_BIN:-target/release/tally}
PORT=${PORT:-18181}
DATA=$(mktemp -d)
TALLY=http://127.0.0.1:$PORT
ADMIN=bench-admin-token
pid=
start() {
  "$TALLY_BIN" serve --data "$DATA" --listen "127.0.0.1:$PORT" --admin-token "$ADMIN" >"$DATA/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "$TALLY/healthz" >/dev/null && return; sleep 0.05; done
  echo "server did not start" >&2; cat "$DATA/serve.log" >&2; exit 1
}
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$DATA"' EXIT
start
tenant_id=$(curl -sf -X POST "$TALLY/v1/tenants" -H "Authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"name":"bench"}' | sed -E 's/.*"id":([0-9]+).*/\1/')
KEY=$(curl -sf -X POST "$TALLY/v1/tenants/$tenant_id/keys" -H "Authorization: Bearer $ADMIN" \
  | sed -E 's/.*"key":"([^"]+)".*/\1/')
module_id=$(curl -sf -X POST "$TALLY/v1/modules" -H "Authorization: Bearer $KEY" \
  --data-binary @guests/wasm/noop.wasm | sed -E 's/.*"id":"([0-9a-f]{64})".*/\1/')
curl -sf -X PUT "$TALLY/v1/functions/noop" -H "Authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d "{\"module\":\"$module_id\"}" >/dev/null
cat >"$DATA/invoke.lua" <<LUA
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
echo "== concurrency 1 (no-op function, 10 s)"
wrk -t1 -c1 -d10s --latency -s "$DATA/invoke.lua" "$TALLY/v1/functions/noop/invoke" | grep -E "Latency|50%|99%|Requests/sec|Non-2xx"
echo "== concurrency 32 (no-op function, 10 s)"
wrk -t2 -c32 -d10s --latency -s "$DATA/invoke.lua" "$TALLY/v1/functions/noop/invoke" | grep -E "Latency|50%|99%|Requests/sec|Non-2xx"
echo "== first invocation after a restart"
kill $pid; wait $pid 2>/dev/null || true
start
curl -sf -o /dev/null -w "first invoke after restart: %{time_total} s\n" -X POST \
  -H "Authorization: Bearer $KEY" "$TALLY/v1/functions/noop/invoke"
curl -sf -o /dev/null -w "second invoke: %{time_total} s\n" -X POST \
  -H "Authorization: Bearer $KEY" "$TALLY/v1/functions/noop/invoke"
records=$(curl -sf "$TALLY/v1/usage?limit=1" -H "Authorization: Bearer $KEY" | head -c 300)
echo "usage (first page): $records"
