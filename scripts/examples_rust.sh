#!/usr/bin/env bash
# Runs the Rust examples (examples/rust) against a real server and checks what
# they print: `follow` watches the session and must report its three status
# changes (created ACTIVE/IDLE, RUNNING, IDLE); `agent` runs one turn twice,
# and the second run, a retried turn, must store nothing twice.
#
# It builds first (so build time never counts against a deadline), starts
# `.venv/bin/sessiond serve` on a free loopback port with a temporary
# database, and removes everything at the end. Crates come from crates.io at
# the versions in examples/rust/Cargo.lock; the build directory is shared
# with scripts/interop.sh ($CARGO_TARGET_DIR, default
# ~/.cache/sessiond-interop/cargo-target). Needs: .venv (make install), cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${SESSIOND_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sessiond-interop}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/cargo-target}
PY=${PYTHON:-.venv/bin/python}
SESSIOND=${SESSIOND:-.venv/bin/sessiond}

log() { printf '==> %s\n' "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-examples-rust.XXXXXX")
server_pid="" follow_pid=""
cleanup() {
  for pid in $follow_pid $server_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

log "building examples/rust (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd examples/rust && cargo build --locked --quiet --bins)
bin="$CARGO_TARGET_DIR/debug"

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SESSIOND_ADDRESS="127.0.0.1:$port"
log "starting the server on $SESSIOND_ADDRESS"
"$SESSIOND" serve --database "$work/sessiond.db" --address "$SESSIOND_ADDRESS" >"$work/server.log" 2>&1 &
server_pid=$!
"$PY" - "$SESSIOND_ADDRESS" <<'PYEOF' || { cat "$work/server.log" >&2; exit 1; }
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    grpc.channel_ready_future(channel).result(timeout=60)
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(600):
        if health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1:
            break
    else:
        raise SystemExit("the server never answered SERVING")
PYEOF

session="example-rust-$RANDOM"
log "follow $session (until 3 changes) while agent runs a turn, then the same turn again"
"$bin/follow" "$session" 3 >"$work/follow.out" 2>&1 &
follow_pid=$!
# The watch is confirmed once follow prints its first line.
for _ in $(seq 600); do [[ -s "$work/follow.out" ]] && break; sleep 0.1; done
"$bin/agent" "$session" 1 "How many words are in this question?" | tee "$work/agent1.out"
"$bin/agent" "$session" 1 "How many words are in this question?" | tee "$work/agent2.out"
for _ in $(seq 600); do kill -0 "$follow_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$follow_pid" 2>/dev/null; then
  echo "follow did not see three changes within 60 s:" >&2; cat "$work/follow.out" >&2; exit 1
fi
wait "$follow_pid"; follow_pid=""
cat "$work/follow.out"

failed=0
expect() {  # expect FILE PATTERN: a line of FILE matches the extended regex
  if ! grep -Eq -- "$2" "$1"; then
    echo "missing in $(basename "$1"): $2" >&2; failed=1
  fi
}
expect "$work/follow.out" "^watching from revision [0-9]+$"
expect "$work/follow.out" "^revision [0-9]+: $session SESSION_STATUS_ACTIVE RUNTIME_STATE_IDLE$"
expect "$work/follow.out" "^revision [0-9]+: $session SESSION_STATUS_ACTIVE RUNTIME_STATE_RUNNING$"
[[ $(grep -c "RUNTIME_STATE_IDLE$" "$work/follow.out") == 2 ]] || { echo "follow: not two IDLE lines" >&2; failed=1; }
expect "$work/agent1.out" "^context: 1 message\(s\), last seq 1$"
expect "$work/agent1.out" "^session $session: 4 messages, .*1 tool calls, cost 450 micro-dollars, state RUNTIME_STATE_IDLE$"
# The retried turn stores nothing twice: same seqs, same count, usage once.
expect "$work/agent2.out" "^session $session: 4 messages, .*cost 450 micro-dollars \(usage already recorded\)"
expect "$work/agent2.out" "^reply seqs: \[2, 3, 4\]$"
if [[ $failed -ne 0 ]]; then
  echo "--- server log" >&2; tail -30 "$work/server.log" >&2; exit 1
fi
echo "examples/rust: agent and follow passed"
