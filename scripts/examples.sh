#!/usr/bin/env bash
# Runs each language's example agent runtime (examples/<lang>/) against a real
# server, with its watch follower alongside, and checks what they stored and
# printed. One server for all languages; each language uses its own session.
#
# The contract of an example pair (run_example_pair):
#   follower  FOLLOW_CMD..., run first in the background with the server's
#             address in SESSIOND_ADDRESS and the session id in
#             SESSIOND_EXAMPLE_SESSION: prints a line containing "watching"
#             once it follows the session, a line per status change (among
#             them one ending "running" and one ending "idle"), and exits 0
#             once the session has gone from running back to idle;
#   agent     AGENT_CMD..., same variables: runs one turn (touch, running,
#             user message, last 20 messages, assistant reply with a tool call
#             and its result, usage, idle) and exits 0.
# The script then reads the session with the Python client: 3 messages, one
# tool call, 907 tokens, runtime state idle.
#
# Needs: .venv (make install), go (and node/npm, cargo for their examples).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SESSIOND=${SESSIOND:-.venv/bin/sessiond}
# shellcheck source=scripts/test_server.sh
. scripts/test_server.sh

log() { printf '==> %s\n' "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/sessiond-examples.XXXXXX")
follower_pid=""
cleanup() {
  [[ -n "$follower_pid" ]] && kill "$follower_pid" 2>/dev/null || true
  test_server_stop "$work" TERM
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting the server"
test_server_start "$work"
SESSIOND_ADDRESS=$(cat "$work/address")
export SESSIOND_ADDRESS

# run_example_pair NAME SESSION -- FOLLOW_CMD... -- AGENT_CMD...
run_example_pair() {
  local name=$1 session=$2; shift 3
  local follow=() agent=()
  while [[ $1 != -- ]]; do follow+=("$1"); shift; done; shift
  agent=("$@")
  export SESSIOND_EXAMPLE_SESSION=$session
  log "$name: follower"
  "${follow[@]}" >"$work/$name.follow" 2>&1 &
  follower_pid=$!
  for _ in $(seq 600); do
    grep -q watching "$work/$name.follow" && break
    kill -0 "$follower_pid" 2>/dev/null || { cat "$work/$name.follow" >&2; return 1; }
    sleep 0.1
  done
  grep -q watching "$work/$name.follow" || { echo "$name: the follower never started" >&2; return 1; }
  log "$name: agent"
  "${agent[@]}"
  for _ in $(seq 600); do kill -0 "$follower_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$follower_pid" 2>/dev/null; then
    echo "$name: the follower did not see the turn end" >&2; cat "$work/$name.follow" >&2; return 1
  fi
  wait "$follower_pid"; follower_pid=""
  cat "$work/$name.follow"
  grep -q 'running$' "$work/$name.follow" && grep -q 'idle$' "$work/$name.follow" \
    || { echo "$name: the follower printed no running/idle change" >&2; return 1; }
  "$PY" - "$SESSIOND_ADDRESS" "$session" <<'PYEOF'
import sys

from sessiond import Client
from sessiond.v1 import session_pb2

with Client(sys.argv[1]) as client:
    s = client.get_session(session_id=sys.argv[2]).session
    assert s.message_count == 3, s
    assert s.tool_call_count == 1, s
    assert s.usage.total_tokens == 907, s
    assert s.runtime_state == session_pb2.RUNTIME_STATE_IDLE, s
    print(f"{s.id}: {s.message_count} messages, {s.usage.total_tokens} tokens, idle")
PYEOF
}

# Go (examples/go): built as a user outside this repository would build it.
# client/go is packed into a module proxy on disk (the layout `go get`
# downloads from a public proxy), at a pseudo-version named by a hash of its
# files so that the module cache never serves an older copy, and a copy of
# examples/go without its replace directive fetches it from there; the rest
# comes from the public proxy.
log "packing client/go as a module and building the Go examples against it"
go_module=github.com/sessiond/sessiond/client/go
go_version=$("$PY" - "$work/goproxy" "$go_module" <<'PYEOF'
import hashlib
import json
import pathlib
import subprocess
import sys
import zipfile

proxy, module = pathlib.Path(sys.argv[1]), sys.argv[2]
files = sorted(subprocess.run(["git", "ls-files", "client/go"], check=True,
                              capture_output=True, text=True).stdout.split())
digest = hashlib.sha256()
for name in files:
    digest.update(name.encode() + b"\0" + pathlib.Path(name).read_bytes())
version = f"v0.0.0-20000101000000-{digest.hexdigest()[:12]}"
at = proxy / module / "@v"
at.mkdir(parents=True)
(at / "list").write_text(version + "\n")
(at / f"{version}.info").write_text(json.dumps({"Version": version}))
(at / f"{version}.mod").write_bytes(pathlib.Path("client/go/go.mod").read_bytes())
with zipfile.ZipFile(at / f"{version}.zip", "w") as packed:
    for name in files:
        packed.write(name, f"{module}@{version}/{name.removeprefix('client/go/')}")
print(version)
PYEOF
)
cp -r examples/go "$work/examples-go"
(
  cd "$work/examples-go"
  export GOPROXY="file://$work/goproxy,${GOPROXY:-https://proxy.golang.org}" GONOSUMDB=$go_module GOFLAGS=-mod=mod
  go mod edit -dropreplace=$go_module -require=$go_module@$go_version
  go mod tidy
  go list -m $go_module
  go vet ./... && go build -o "$work/go-bin/" ./...
)
run_example_pair go example:go \
  -- bash -c "'$work/go-bin/follow' -address \"\$SESSIOND_ADDRESS\" -session \"\$SESSIOND_EXAMPLE_SESSION\" -until-idle" \
  -- bash -c "'$work/go-bin/agent' -address \"\$SESSIOND_ADDRESS\" -session \"\$SESSIOND_EXAMPLE_SESSION\" -turn t1 'What is WAL mode?'"

# TypeScript (examples/typescript): packed with npm pack, installed as a user would.
. scripts/examples_typescript.sh

# Rust (examples/rust).
. scripts/examples_rust.sh

log "examples: all passed"
