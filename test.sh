#!/usr/bin/env bash
# Runs every test: format, lints, unit and black-box tests, then interop with the official
# clients (socket.io-client under Node, python-socketio) and the page in headless Chromium.
# Installs its npm and pip packages into git-ignored folders on first run.
set -euo pipefail
cd "$(dirname "$0")"
step() { printf '\n== %s\n' "$*"; }

step "format and lints"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

step "unit and black-box tests (cargo test)"
cargo build --locked
cargo test --locked

step "installing interop clients (npm, pip) if missing"
if [ ! -d tests/interop/node_modules ]; then
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -c "import socketio, pytest, aiohttp" 2>/dev/null || .venv/bin/pip install -q -r tests/interop/requirements.txt

export TINYSIO_BIN="$PWD/target/debug/tinysio"

step "interop: socket.io-client@4 under Node"
node --test --test-concurrency=1 --test-timeout=60000 tests/interop/

step "interop: python-socketio"
.venv/bin/python -m pytest -q tests/interop/
