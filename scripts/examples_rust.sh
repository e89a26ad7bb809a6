# The Rust pair of scripts/examples.sh (examples/rust), sourced by it:
#
#   . scripts/examples_rust.sh
#
# It builds examples/rust (a crate depending on client/rust by path) and runs
# its `follow` and `agent` under the contract of run_example_pair, which
# scripts/examples.sh defines along with `log` and the running server. The
# agent runs its turn twice, as a runtime that crashed mid-turn would: the
# checks that follow (3 messages, 907 tokens) then also prove that the retried
# turn stored nothing twice. The build directory is the one scripts/interop.sh
# uses ($CARGO_TARGET_DIR, default ~/.cache/sessiond-interop/cargo-target).
rust_cache=${SESSIOND_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sessiond-interop}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$rust_cache/cargo-target}
log "building the Rust examples (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd examples/rust && cargo build --locked --quiet --bins)
run_example_pair rust example:rust \
  -- "$CARGO_TARGET_DIR/debug/follow" --until-idle \
  -- bash -c '"$0/agent" --turn t1 "What is WAL mode?" && "$0/agent" --turn t1 "What is WAL mode?"' \
  "$CARGO_TARGET_DIR/debug"
