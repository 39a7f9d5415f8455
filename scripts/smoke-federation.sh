#!/usr/bin/env bash
# Smoke test of two compiled nodes peering: swap cards, propose, accept, see it active on both,
# revoke, see it revoked on both, verify both audit logs, SIGTERM, exit 0.
set -euo pipefail
bin=${1:-dist/oe-node}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "smoke-federation: FAIL: $*" >&2; tail -5 "$work"/*.err >&2 || true; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # name org
  "$bin" --data-dir "$work/$1" init --org "$2" > /dev/null
  "$bin" --data-dir "$work/$1" start --api 127.0.0.1:0 --listen "/ip4/127.0.0.1/tcp/$(free_port)" > "$work/$1.out" 2> "$work/$1.err" &
  pids+=($!)
  for _ in $(seq 1 200); do
    [ -f "$work/$1/api" ] && curl -sf "$(cat "$work/$1/api")/readyz" > /dev/null && return 0
    sleep 0.05
  done
  fail "$1 did not become ready"
}
oe() { local name=$1; shift; "$bin" --data-dir "$work/$name" "$@"; }
wait_for() { # description command...
  local what=$1; shift
  for _ in $(seq 1 100); do "$@" && return 0; sleep 0.1; done
  fail "timed out: $what"
}

start a Gridco
start b Sunfleet
# The compiled binary reaches the system's OpenSSL through bun:ffi (federation.noise_crypto = auto).
noise=$(oe a status | sed -n 's/^noise *//p')
case "$noise" in *openssl*) ;; *) fail "Noise is not on OpenSSL in the compiled binary: '${noise}'" ;; esac
oe a peers add "$(oe b card)" --alias sunfleet > /dev/null
oe b peers add "$(oe a card)" --alias gridco > /dev/null
wait_for "peers to connect" sh -c "'$bin' --data-dir '$work/a' --json peers list | grep -q '\"state\":\"connected\"'"
id=$(oe a --json agreement propose --peer sunfleet --grant 'telemetry:kinds=pv;quantities=power' \
  --purpose smoke --valid-until "$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)" | sed -E 's/.*"id":"([0-9a-f]+)".*/\1/')
wait_for "the proposal to arrive" sh -c "'$bin' --data-dir '$work/b' --json agreement show $id | grep -q '\"state\":\"proposed\"'"
oe b agreement accept "$id" > /dev/null
wait_for "active on the proposer" sh -c "'$bin' --data-dir '$work/a' --json agreement show $id | grep -q '\"state\":\"active\"'"
oe b agreement revoke "$id" --reason smoke > /dev/null
wait_for "revoked on the proposer" sh -c "'$bin' --data-dir '$work/a' --json agreement show $id | grep -q '\"state\":\"revoked\"'"
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do wait "$pid" || fail "a node exited non-zero after SIGTERM"; done
pids=()
oe a audit verify > /dev/null || fail "audit verify a"
oe b audit verify > /dev/null || fail "audit verify b"
echo "smoke-federation: ok (peered over Noise, ${noise}, proposed, accepted, revoked, audit logs verify, clean exits)"
