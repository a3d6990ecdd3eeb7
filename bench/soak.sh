#!/usr/bin/env bash
# Soak: bench/soak.sh [minutes=10] [clients=1000]. Builds the release server, starts it on a
# free port, cycles the clients through it, prints threads / fds / RSS each minute.
set -euo pipefail
cd "$(dirname "$0")"
minutes=${1:-10}
clients=${2:-1000}
[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error
cargo build --release --locked --manifest-path ../Cargo.toml
log=$(mktemp)
# A short --user-ttl so the /movies user table empties within the run (default 600 s).
../target/release/tinysio --port 0 --user-ttl "${USER_TTL:-60}" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.05; done
url=$(grep -o 'http://[0-9.:]*' "$log" | head -1)
node soak.mjs "$url" "$pid" "$minutes" "$clients"
