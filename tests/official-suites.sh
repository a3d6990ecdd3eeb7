#!/usr/bin/env bash
# The official Engine.IO / Socket.IO protocol test suites against `tinysio --conformance`. By
# hand: their code is not ours to commit and CI cannot fetch it. Give their test-suite folders:
#   tests/official-suites.sh ~/src/engine.io-protocol/test-suite ~/src/socket.io-protocol/test-suite
# Each folder gets its own `npm install`, then `npm test`, with the server on port 3000.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,5p "$0"; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --locked --manifest-path "$root/Cargo.toml" -q
"$root/target/release/tinysio" --conformance --port 3000 --log-level warn &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:3000/socket.io/?EIO=4&transport=polling" >/dev/null && break
  sleep 0.05
done
status=0
for suite in "$@"; do
  echo "== $suite"
  (cd "$suite" && { [ -d node_modules ] || npm install --no-audit --no-fund --loglevel=error; } &&
    npm test) || status=1
done
exit $status
