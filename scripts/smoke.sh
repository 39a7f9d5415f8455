#!/usr/bin/env bash
# Smoke test of the compiled binary: init, start on the embedded NATS, /readyz 200, ingest 1,000
# records over HTTP, see the same 1,000 on oe.tel.>, SIGTERM, exit 0.
set -euo pipefail
bin=${1:-dist/oe-node}
work=$(mktemp -d)
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill -KILL "$node_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "smoke: FAIL: $*" >&2; [ -f "$work/node.err" ] && tail -20 "$work/node.err" >&2; exit 1; }

dir="$work/data"
"$bin" --data-dir "$dir" init --org Smoke --json > "$work/init.json" || fail "init"
grep -q '"peerId":"12D3KooW' "$work/init.json" || fail "init printed no peer id"
[ "$(stat -c %a "$dir/keys/node.key")" = "600" ] || fail "key is not 0600"

# Run without nats-server on PATH when one is embedded, to prove the binary carries it.
env PATH=/usr/local/bin:/usr/bin:/bin "$bin" --data-dir "$dir" start --api 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 > "$work/node.out" 2> "$work/node.err" &
node_pid=$!
for _ in $(seq 1 200); do
  if [ -f "$dir/api" ] && curl -sf "$(cat "$dir/api")/readyz" > /dev/null; then break; fi
  kill -0 "$node_pid" 2>/dev/null || fail "node exited during start"
  sleep 0.05
done
api=$(cat "$dir/api")
[ "$(curl -s -o /dev/null -w '%{http_code}' "$api/readyz")" = "200" ] || fail "/readyz is not 200"

now=$(date +%s%3N)
awk -v now="$now" 'BEGIN { for (i = 0; i < 1000; i++) printf "{\"kind\":\"meter\",\"rid\":\"smoke-%d\",\"q\":\"power\",\"v\":%d,\"t\":%.0f}\n", i % 50, i, now + i }' > "$work/records.ndjson"
"$bin" --data-dir "$dir" ingest "$work/records.ndjson" --json > "$work/ingest.json" || fail "ingest: $(cat "$work/ingest.json")"
grep -q '"accepted":1000,"rejected":0' "$work/ingest.json" || fail "ingest answered $(cat "$work/ingest.json")"

"$bin" --data-dir "$dir" tail 'oe.tel.>' --from-start --count 1000 --timeout 30 --json > "$work/tail.ndjson" || fail "tail did not see 1000 messages"
seen=$(grep -c '"subject":"oe.tel.meter.smoke-' "$work/tail.ndjson")
distinct=$(grep -o '"v":[0-9]*' "$work/tail.ndjson" | sort -u | wc -l)
[ "$seen" = "1000" ] && [ "$distinct" = "1000" ] || fail "saw $seen messages, $distinct distinct values"
# Nothing beyond the 1,000 (no duplicates in the stream).
"$bin" --data-dir "$dir" tail 'oe.tel.>' --from-start --timeout 2 --json > "$work/all.ndjson" || true
[ "$(wc -l < "$work/all.ndjson")" = "1000" ] || fail "the stream holds $(wc -l < "$work/all.ndjson") messages, not 1000"

kill -TERM "$node_pid"
code=0
wait "$node_pid" || code=$?
node_pid=""
[ "$code" = "0" ] || fail "node exited with $code after SIGTERM"
[ ! -f "$dir/node.lock" ] || fail "node.lock left behind"
echo "smoke: ok (init, start, readyz, 1000 ingested, 1000 seen on oe.tel.>, clean SIGTERM exit)"
