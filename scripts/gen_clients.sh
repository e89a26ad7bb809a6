#!/usr/bin/env bash
# Generates the Go, TypeScript and Rust clients and docs/api.md from
# protos/sessiond/v1 (`make clients`), after `buf lint` and a breaking-change
# check against the frozen copy in protos/released.
#
#   scripts/gen_clients.sh           lint, check breaking changes, generate, build
#   scripts/gen_clients.sh --check   the same, then fail when the committed
#                                    generated code or docs/api.md is stale
#
# Only local plugins run, at pinned versions, installed from the registries
# into a cache ($SESSIOND_TOOLS_CACHE, default ~/.cache/sessiond-interop):
# buf from npm, protoc-gen-go and protoc-gen-go-grpc with `go install`,
# ts-proto from client/typescript/package-lock.json. Go and TypeScript code is
# committed; the Rust crate generates its code in build.rs (tonic-prost-build
# with the protoc of the protoc-bin-vendored crate) from its own copy of the
# protos (client/rust/proto), so only that copy and its Cargo.lock are.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
PROTOC_GEN_GO_VERSION=v1.36.11
PROTOC_GEN_GO_GRPC_VERSION=v1.6.1

CACHE=${SESSIOND_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sessiond-interop}
PY=${PYTHON:-.venv/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/cargo-target}
NPM_FLAGS=(--no-audit --no-fund --loglevel=error)

check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

log() { printf '==> %s\n' "$*" >&2; }

# npm_ci DIR: `npm ci` in DIR unless its node_modules already match its lock.
npm_ci() {
  local dir=$1 stamp="$1/node_modules/.sessiond-lock.sha256" want
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci "${NPM_FLAGS[@]}")
    echo "$want" >"$stamp"
  fi
}

install_tools() {
  local buf_dir="$CACHE/buf-$BUF_VERSION"
  if [[ ! -x "$buf_dir/node_modules/.bin/buf" ]]; then
    log "installing buf $BUF_VERSION into $buf_dir"
    mkdir -p "$buf_dir"
    echo '{"private": true}' >"$buf_dir/package.json"
    npm install --prefix "$buf_dir" "${NPM_FLAGS[@]}" --save-exact "@bufbuild/buf@$BUF_VERSION"
  fi
  BUF="$buf_dir/node_modules/.bin/buf"

  GO_PLUGINS="$CACHE/go-plugins-$PROTOC_GEN_GO_VERSION-$PROTOC_GEN_GO_GRPC_VERSION"
  if [[ ! -x "$GO_PLUGINS/protoc-gen-go" || ! -x "$GO_PLUGINS/protoc-gen-go-grpc" ]]; then
    log "installing protoc-gen-go $PROTOC_GEN_GO_VERSION, protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION"
    GOBIN="$GO_PLUGINS" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
    GOBIN="$GO_PLUGINS" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
  fi

  npm_ci client/typescript
}

install_tools

log "buf lint"
"$BUF" lint
log "buf breaking against protos/released"
"$BUF" breaking protos --against protos/released

log "generating Go (client/go/sessiondv1)"
PATH="$GO_PLUGINS:$PATH" "$BUF" generate --template buf.gen.go.yaml
log "generating TypeScript (client/typescript/src/gen)"
# google/rpc protos come from the installed googleapis-common-protos package
# (a dependency of grpcio-status), not from a copy kept in this repository.
rpc_protos=$("$PY" -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(m.__file__))')
rm -rf client/typescript/proto
mkdir -p client/typescript/proto/google/rpc
cp "$rpc_protos/status.proto" "$rpc_protos/error_details.proto" client/typescript/proto/google/rpc/
"$BUF" generate --template buf.gen.ts.yaml
log "copying the protos into the Rust crate (client/rust/proto)"
# The crate's build.rs reads its own copy, so that `cargo package` has them.
rm -rf client/rust/proto
mkdir -p client/rust/proto/sessiond/v1
cp protos/sessiond/v1/*.proto client/rust/proto/sessiond/v1/
log "generating docs/api.md"
"$PY" scripts/gen_api_docs.py docs/api.md

log "building the Go client"
(cd client/go && go build ./... && go vet ./...)
log "building the TypeScript client"
(cd client/typescript && npm run --silent build)
log "packaging the Rust client (builds the .crate alone: its code from its own protos)"
(cd client/rust && cargo package --locked --allow-dirty --quiet)

if $check; then
  generated=(client/go client/typescript/src/gen client/rust/proto docs/api.md)
  if ! git diff --exit-code --stat -- "${generated[@]}" \
      || [[ -n "$(git status --porcelain -- "${generated[@]}")" ]]; then
    git status --short -- "${generated[@]}" >&2
    echo "generated clients or docs/api.md are stale: run \`make clients\` and commit" >&2
    exit 1
  fi
  log "generated code is fresh"
fi
