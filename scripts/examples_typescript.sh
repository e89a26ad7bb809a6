# Sourced by scripts/examples.sh (which defines log, run_example_pair and the
# running server): the TypeScript examples (examples/typescript), run the way
# a user would consume the client. `npm pack` turns client/typescript into a
# tarball (compiled JS and type declarations), the sample project installs
# its locked dependencies and that tarball, builds, and its two programs run
# as an example pair against the server.
#
# `npm ci` alone would install the tarball recorded in the sample project's
# lock, possibly an older build taken from npm's cache by its integrity, so
# the fresh tarball is installed over it with `npm install --no-save`.

ts_npm_flags=(--no-audit --no-fund --loglevel=error)
log "typescript: packing the client and building the sample project"
(cd client/typescript && npm ci "${ts_npm_flags[@]}" >/dev/null)
ts_tarball=$(cd client/typescript && npm pack --silent | tail -1)
log "typescript: client/typescript/$ts_tarball"
(
  cd examples/typescript
  npm ci "${ts_npm_flags[@]}" >/dev/null
  npm install --no-save "${ts_npm_flags[@]}" "../../client/typescript/$ts_tarball" >/dev/null
  npx --no-install tsc -p tsconfig.json
)
run_example_pair typescript example:typescript \
  -- node examples/typescript/dist/follow.js --until-idle \
  -- node examples/typescript/dist/agent.js --turn t1 "What is WAL mode?"
