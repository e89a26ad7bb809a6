# Sourced by scripts/interop.sh and scripts/examples.sh: a throwaway sessiond
# server for client runs. Its files live in one directory DIR: sessiond.db,
# address, server.args (the extra `serve` flags, reused on restart),
# server.pid and server.log. Needs PY and SESSIOND (paths from the repository
# root, the current directory).

# test_server_start DIR [SERVE FLAGS...]: start on DIR/address (a free
# loopback port is picked the first time) and wait until health is SERVING.
test_server_start() {
  local dir=$1; shift
  if [[ ! -s "$dir/address" ]]; then
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(f"127.0.0.1:{s.getsockname()[1]}")' >"$dir/address"
    printf '%s\n' "$@" >"$dir/server.args"
  fi
  local flags=()
  mapfile -t flags < <(grep -v '^$' "$dir/server.args")
  # The harnesses' own SESSIOND_* variables are not server settings.
  local unset=() name
  for name in ${!SESSIOND_INTEROP_@} ${!SESSIOND_EXAMPLE_@}; do unset+=(-u "$name"); done
  # setsid: the server must outlive a restart command that starts it.
  env "${unset[@]}" setsid "$SESSIOND" serve --database "$dir/sessiond.db" --address "$(cat "$dir/address")" \
    "${flags[@]}" >>"$dir/server.log" 2>&1 </dev/null &
  echo $! >"$dir/server.pid"
  disown  # a test may kill it with SIGKILL on purpose: that is not news
  "$PY" - "$(cat "$dir/address")" <<'PYEOF' || { cat "$dir/server.log" >&2; return 1; }
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

deadline = time.monotonic() + 60
with grpc.insecure_channel(sys.argv[1]) as channel:
    grpc.channel_ready_future(channel).result(timeout=60)
    health = health_pb2_grpc.HealthStub(channel)
    while True:
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        if answer.status == health_pb2.HealthCheckResponse.SERVING:
            break
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)
PYEOF
}

# test_server_stop DIR SIGNAL: send SIGNAL (TERM, KILL) and wait until it is gone.
test_server_stop() {
  local dir=$1 signal=$2 pid
  pid=$(cat "$dir/server.pid" 2>/dev/null) || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

# test_server_alive DIR: whether the server is still running.
test_server_alive() { kill -0 "$(cat "$1/server.pid" 2>/dev/null)" 2>/dev/null; }
