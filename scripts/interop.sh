#!/usr/bin/env bash
# Interop proof: the generated Go, TypeScript and Rust clients run one
# scenario (tests/interop/SCENARIO.md) against a real Python server, and what
# each observed must equal the run of the Python reference.
#
# It builds the three suites first (so that build time never counts against
# the server or a deadline), starts `.venv/bin/sessiond serve` on a free
# loopback port with a temporary database, passes its address in
# SESSIOND_ADDRESS, runs the reference and the three suites (go test,
# node --test, cargo test), compares their outputs (tests/interop/compare.py),
# stops the server and removes its files. Dependencies come from the
# registries at the versions locked in the repository and are cached between
# runs (~/.cache/sessiond-interop, Go's and npm's and Cargo's own caches).
# Needs: .venv (make install), go, node/npm, cargo. No input; CI=true is fine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE=${SESSIOND_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sessiond-interop}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/cargo-target}
PY=${PYTHON:-.venv/bin/python}
SESSIOND=${SESSIOND:-.venv/bin/sessiond}
NPM_FLAGS=(--no-audit --no-fund --loglevel=error)

log() { printf '==> %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { printf '%.1f' "$(echo "$(now) - $1" | bc)"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-interop.XXXXXX")
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

npm_ci() {
  local dir=$1 stamp="$1/node_modules/.sessiond-lock.sha256" want
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    (cd "$dir" && npm ci "${NPM_FLAGS[@]}" >/dev/null)
    echo "$want" >"$stamp"
  fi
}

declare -A build_seconds run_seconds
# Build each suite before the server starts.
start=$(now); log "building the Go suite"
(cd tests/interop/go && go vet ./... && go test -c -o "$work/interop-go.test" .)
build_seconds[go]=$(elapsed "$start")

start=$(now); log "building the TypeScript client and suite"
npm_ci client/typescript
(cd client/typescript && npm run --silent build)
npm_ci tests/interop/typescript
(cd tests/interop/typescript && npx --no-install tsc -p tsconfig.json)
build_seconds[typescript]=$(elapsed "$start")

start=$(now); log "building the Rust client and suite (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd client/rust && cargo test --locked --test interop --no-run --quiet)
build_seconds[rust]=$(elapsed "$start")

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SESSIOND_ADDRESS="127.0.0.1:$port"
log "starting the server on $SESSIOND_ADDRESS"
"$SESSIOND" serve --database "$work/sessiond.db" --address "$SESSIOND_ADDRESS" \
  >"$work/server.log" 2>&1 &
server_pid=$!
"$PY" - "$SESSIOND_ADDRESS" <<'PYEOF' || { cat "$work/server.log" >&2; exit 1; }
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    grpc.channel_ready_future(channel).result(timeout=30)
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING, answer
PYEOF

passed=0 failed=0
declare -A result
run_suite() {
  local name=$1; shift
  local start; start=$(now)
  log "running the $name suite"
  if (SESSIOND_INTEROP_OUT="$work/$name.jsonl" "$@"); then
    result[$name]=passed; passed=$((passed + 1))
  else
    result[$name]=FAILED; failed=$((failed + 1))
  fi
  run_seconds[$name]=$(elapsed "$start")
}
run_suite python "$PY" tests/interop/reference.py
run_suite go bash -c "cd tests/interop/go && '$work/interop-go.test' -test.v -test.count=1"
run_suite typescript bash -c "cd tests/interop/typescript && node --test dist/interop.test.js"
run_suite rust bash -c "cd client/rust && cargo test --locked --test interop --quiet -- --nocapture"

if "$PY" tests/interop/compare.py "$work/python.jsonl" \
    go="$work/go.jsonl" typescript="$work/typescript.jsonl" rust="$work/rust.jsonl"; then
  result[compare]=passed; passed=$((passed + 1))
else
  result[compare]=FAILED; failed=$((failed + 1))
fi

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "the server died during the run:" >&2; cat "$work/server.log" >&2
  failed=$((failed + 1))
elif [[ $failed -gt 0 ]]; then
  echo "--- server log" >&2; tail -50 "$work/server.log" >&2
fi

echo
printf '%-11s %-7s %8s %8s\n' suite result build_s run_s
for name in python go typescript rust compare; do
  printf '%-11s %-7s %8s %8s\n' "$name" "${result[$name]}" "${build_seconds[$name]:--}" "${run_seconds[$name]:--}"
done
echo "interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
