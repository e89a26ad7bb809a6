#!/usr/bin/env bash
# Interop proof: the client layers of Go, TypeScript and Rust run one scenario
# (tests/interop/SCENARIO.md) against a real Python server, and what each
# observed must equal the run of the Python reference (the Python client).
#
# It builds the three suites first (so that build time never counts against
# the server or a deadline), starts `.venv/bin/sessiond serve` on a free
# loopback port with a temporary database and a change log that keeps only
# 200 revisions, and runs the reference and the three suites (go test,
# node --test, cargo test) one after another. Each suite gets SESSIOND_ADDRESS,
# SESSIOND_INTEROP_OUT, SESSIOND_INTEROP_RESTART (an executable that kills the
# server with SIGKILL and starts it again: `scripts/interop.sh restart-server
# WORKDIR`) and SESSIOND_INTEROP_PROXY (tests/interop/proxy.py, fresh per
# suite, which loses the first response it carries). Then it compares their
# outputs (tests/interop/compare.py), stops the server and removes its files.
# Dependencies come from the registries at the versions locked in the
# repository and are cached between runs (~/.cache/sessiond-interop, Go's and
# npm's and Cargo's own caches).
# SESSIOND_INTEROP_SUITES picks the languages (default "go typescript rust";
# the Python reference always runs).
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

# The server: scripts/test_server.sh. A suite's restart runs the same code
# as the harness's own start.
# shellcheck source=scripts/test_server.sh
. scripts/test_server.sh

if [[ "${1:-}" == restart-server ]]; then
  # SESSIOND_INTEROP_RESTART: SIGKILL the server, start it again, wait for SERVING.
  dir=$2
  echo "--- restart requested" >>"$dir/server.log"
  test_server_stop "$dir" KILL
  test_server_start "$dir"
  echo "$(( $(cat "$dir/restarts" 2>/dev/null || echo 0) + 1 ))" >"$dir/restarts"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-interop.XXXXXX")
proxy_pid=""
cleanup() {
  [[ -n "$proxy_pid" ]] && kill "$proxy_pid" 2>/dev/null || true
  test_server_stop "$work" TERM
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

read -r -a suites <<<"${SESSIOND_INTEROP_SUITES:-go typescript rust}"
wanted() { [[ " ${suites[*]} " == *" $1 "* ]]; }

declare -A build_seconds run_seconds
# Build each suite before the server starts.
if wanted go; then
  start=$(now); log "building the Go suite"
  (cd client/go && go vet ./... && go test -count=1 ./...)
  (cd tests/interop/go && go vet ./... && go test -c -o "$work/interop-go.test" .)
  build_seconds[go]=$(elapsed "$start")
fi

if wanted typescript; then
  start=$(now); log "building the TypeScript client and suite"
  npm_ci client/typescript
  (cd client/typescript && npm run --silent build && npm test)
  npm_ci tests/interop/typescript
  (cd tests/interop/typescript && npx --no-install tsc -p tsconfig.json)
  build_seconds[typescript]=$(elapsed "$start")
fi

if wanted rust; then
  start=$(now); log "building the Rust client and suite (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd client/rust && cargo test --locked --test interop --no-run --quiet)
  build_seconds[rust]=$(elapsed "$start")
fi

log "starting the server"
test_server_start "$work" --changelog-keep-revisions 200 --changelog-max-age-seconds 0 \
  --compaction-interval-seconds 0.5
SESSIOND_ADDRESS=$(cat "$work/address")
export SESSIOND_ADDRESS
log "the server listens on $SESSIOND_ADDRESS"
restart="$work/restart-server"
printf '#!/usr/bin/env bash\nexec bash %q restart-server %q\n' "$ROOT/scripts/interop.sh" "$work" >"$restart"
chmod +x "$restart"
export SESSIOND_INTEROP_RESTART=$restart

passed=0 failed=0
declare -A result
run_suite() {
  local name=$1; shift
  local start cuts; start=$(now)
  log "running the $name suite"
  # A fresh proxy per suite: it loses the first response of its first connection.
  coproc PROXY { exec "$PY" tests/interop/proxy.py "$SESSIOND_ADDRESS" "$work/$name.cuts"; }
  proxy_pid=$PROXY_PID
  local proxy_port; read -r proxy_port <&"${PROXY[0]}"
  if (SESSIOND_INTEROP_OUT="$work/$name.jsonl" SESSIOND_INTEROP_PROXY="127.0.0.1:$proxy_port" "$@"); then
    cuts=$(cat "$work/$name.cuts")
    if [[ "$cuts" == 1 ]]; then
      result[$name]=passed; passed=$((passed + 1))
    else
      echo "the $name suite made the proxy cut $cuts responses, not 1" >&2
      result[$name]=FAILED; failed=$((failed + 1))
    fi
  else
    result[$name]=FAILED; failed=$((failed + 1))
  fi
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
  proxy_pid=""
  run_seconds[$name]=$(elapsed "$start")
}
run_suite python "$PY" tests/interop/reference.py
wanted go && run_suite go bash -c "cd tests/interop/go && '$work/interop-go.test' -test.v -test.count=1"
wanted typescript && run_suite typescript bash -c "cd tests/interop/typescript && node --test dist/interop.test.js"
wanted rust && run_suite rust bash -c "cd client/rust && cargo test --locked --test interop --quiet -- --nocapture"

outputs=()
for name in "${suites[@]}"; do outputs+=("$name=$work/$name.jsonl"); done
if "$PY" tests/interop/compare.py "$work/python.jsonl" "${outputs[@]}"; then
  result[compare]=passed; passed=$((passed + 1))
else
  result[compare]=FAILED; failed=$((failed + 1))
fi

if ! test_server_alive "$work"; then
  echo "the server died during the run:" >&2; tail -50 "$work/server.log" >&2
  failed=$((failed + 1))
elif [[ $failed -gt 0 ]]; then
  echo "--- server log" >&2; tail -50 "$work/server.log" >&2
fi

echo
printf '%-11s %-7s %8s %8s\n' suite result build_s run_s
for name in python "${suites[@]}" compare; do
  printf '%-11s %-7s %8s %8s\n' "$name" "${result[$name]}" "${build_seconds[$name]:--}" "${run_seconds[$name]:--}"
done
restarts=$(cat "$work/restarts" 2>/dev/null || echo 0)
echo "server restarts requested by the suites: $restarts (one per suite expected)"
if [[ $restarts -ne $((1 + ${#suites[@]})) ]]; then
  echo "every suite must restart the server once (watch_restart)" >&2
  failed=$((failed + 1))
fi
echo "interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
