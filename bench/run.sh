#!/usr/bin/env bash
# The benchmark: tinysio against Node socket.io, socketioxide and Flask-SocketIO, in one run on
# this machine, with the same load generator and the same handlers. Installs the peers itself.
#   bench/run.sh            the full run (about 20 minutes; ROUNDS=5 about half an hour)
#   QUICK=1 bench/run.sh    a short smoke run (2 s echoes, small sizes)
#   SERVERS="tinysio socketioxide" bench/run.sh    only these servers
#   ROUNDS=5 bench/run.sh   rounds of every row (default 3; the table shows medians)
#   PAIRS=24 SECS=5 bench/run.sh    one row in alternating pairs, for a row too close to call
#                                   (ROW="echo websocket 100" and PEER=socketioxide by default;
#                                   ROW is "scenario transport clients", any scenario)
#   PIN=1 bench/run.sh      the load generator on CPU 0 and every server on the other CPUs
#                           (taskset), for any of the above; by default they share all CPUs
# Writes bench/out/results.jsonl (one JSON line per measurement) and bench/out/table.md, or
# with PAIRS, bench/out/pairs.jsonl and the ratios' geometric mean with its 95 % interval.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)
out=out
mkdir -p "$out"
results=$out/results.jsonl
[ -n "${PAIRS:-}" ] && results=$out/pairs.jsonl
: >"$results"

echo "== building and installing (release server, load generator, peers)"
cargo build --release --locked --manifest-path "$root/Cargo.toml" -q
cargo build --release --manifest-path loadgen/Cargo.toml -q
cargo build --release --manifest-path peers/socketioxide/Cargo.toml -q
[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error
[ -x "$root/.venv/bin/python" ] || python3 -m venv "$root/.venv"
"$root/.venv/bin/python" -c "import flask_socketio, simple_websocket" 2>/dev/null ||
  "$root/.venv/bin/pip" install -q -r peers/requirements.txt
loadgen=loadgen/target/release/tinysio-loadgen

if [ -n "${QUICK:-}" ]; then secs=2; echo_sizes="1 10"; bcast_sizes="100"; conn_sizes="1000"
else secs=10; echo_sizes="1 10 100"; bcast_sizes="100 1000"; conn_sizes="1000 5000 10000"; fi
secs=${SECS:-$secs}

# PIN: the same split for every server, so a row can be read without the kernel placing a
# server's threads on the generator's CPU (README, performance: the two p99 rows). The
# generator's core-pair probe then has one CPU and records null (no placement split).
server_cpus=() generator_cpus=()
if [ -n "${PIN:-}" ]; then
  cpus=$(nproc)
  [ "$cpus" -ge 2 ] || { echo "PIN needs 2 CPUs or more"; exit 1; }
  generator_cpus=(taskset -c 0) server_cpus=(taskset -c "1-$((cpus - 1))")
fi

port=5200
start() { # name → sets pid, addr
  port=$((port + 1))
  case $1 in
    tinysio) "${server_cpus[@]}" "$root/target/release/tinysio" --port $port --log-level warn 2>"$out/$1.log" & ;;
    socketioxide) "${server_cpus[@]}" peers/socketioxide/target/release/socketioxide-peer $port >"$out/$1.log" 2>&1 & ;;
    socket.io) "${server_cpus[@]}" node peers/node-server.mjs $port >"$out/$1.log" 2>&1 & ;;
    flask-socketio) "${server_cpus[@]}" "$root/.venv/bin/python" peers/flask_server.py $port >"$out/$1.log" 2>&1 & ;;
  esac
  pid=$!
  addr=127.0.0.1:$port
  for _ in $(seq 200); do
    curl -fs "http://$addr/socket.io/?EIO=4&transport=polling" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$1 did not start"; cat "$out/$1.log"; return 1
}
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
round=1 place= # place: set by each() for its runs (bash scope), empty in pairs
run() { # server scenario transport clients
  local line
  line=$(timeout 180 "${generator_cpus[@]}" "$loadgen" --addr "$addr" --pid "$pid" --server "$1" --scenario "$2" --transport "$3" --clients "$4" --seconds "$secs") ||
    line="{\"server\":\"$1\",\"scenario\":\"$2\",\"transport\":\"$3\",\"clients\":$4,\"error\":\"timed out or failed\"}"
  echo "${line%\}},\"round\":$round${place:+,\"place\":$place}${PIN:+,\"pinned\":true}}" | tee -a "$results"
}

# Side by side: each measurement runs on every server back to back, each on a fresh server, so
# the servers of one row are seconds apart, not minutes: this VM's speed drifts
# by tens of percent over minutes (the same server's echo at 100 clients ranged 45k–83k
# acks/s in one quarter hour), which made a server-after-server order decide rows by luck.
# Rounds: every row runs ROUNDS times, interleaved (every row once, then again), the servers'
# order rotating by one place each round (see each()); the table
# shows each server's median (its worst round for loss and failed joins), and its ratio is the
# median of the same-round ratios, so one slow minute cannot decide a row. The spread stays in
# results.jsonl ("round"). Flask-SocketIO, far behind on every row, runs in the first round only
# (its 10k connect alone takes two minutes).
# Pairs: one row, tinysio and one peer, each pair on fresh servers back to back, so both sides
# of a pair see the VM at the same speed; the order flips every pair, so a steady drift favours
# neither. The ratio of each pair is kept; report.py prints their geometric mean and a 95 %
# interval (mean of the log ratios ± two standard errors): a precise answer for a row that the
# rounds call a tie.
if [ -n "${PAIRS:-}" ]; then
  read -r scenario transport clients <<<"${ROW:-echo websocket 100}"
  peer=${PEER:-socketioxide}
  for round in $(seq "$PAIRS"); do
    order="tinysio $peer"
    [ $((round % 2)) = 1 ] && order="$peer tinysio"
    for server in $order; do
      start "$server"
      run "$server" "$scenario" "$transport" "$clients"
      stop
    done
  done
  python3 report.py --pairs "$results" "$peer"
  exit
fi

servers=${SERVERS:-tinysio socketioxide socket.io flask-socketio}
rounds=${ROUNDS:-${QUICK:+1}}
rounds=${rounds:-3}
each() { # scenario transport clients [servers]
  local list=() server
  for server in ${4:-$servers}; do
    [ "$server" = flask-socketio ] && [ "$round" -gt 1 ] && continue
    list+=("$server")
  done
  [ ${#list[@]} -gt 0 ] || return 0
  # Round r starts at the r-th server of the round's list and wraps, so every server takes
  # every place in turn: with a fixed order, whatever the host does at a fixed point of each
  # row falls on the same server every round (tinysio ran first, and its runs were the ones
  # the host most often moved to the distant pair of cores).
  local shift=$(((round - 1) % ${#list[@]})) place=0
  for server in "${list[@]:shift}" "${list[@]:0:shift}"; do
    place=$((place + 1))
    start $server
    run $server "$1" "$2" "$3"
    stop
  done
}
for round in $(seq "$rounds"); do
  echo "== round $round of $rounds"
  for t in websocket polling; do for n in $echo_sizes; do each echo $t $n; done; done
  case " $servers " in *" tinysio "*) for n in $echo_sizes; do each echo sse $n tinysio; done ;; esac
  for n in $conn_sizes; do each connect websocket $n; done # RSS and threads at rest are a fresh server's
  for n in $bcast_sizes; do each broadcast websocket $n; done
done

python3 report.py "$out/results.jsonl" >"$out/table.md"
cat "$out/table.md"
