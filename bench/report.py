"""Turns bench/out/results.jsonl into the markdown table of README's performance section."""
import json
import math
import statistics
import sys

PEERS = ["socketioxide", "socket.io", "flask-socketio"]

# (label, scenario, transport, metric, only: "lossless" to compare with peers that lost nothing,
#  higher is better: True, False, or None for informational rows)
TABLE = [
    ("echo acks/s", "echo", "websocket", "acks_per_s", "", True),
    ("echo server CPU ms / 1k acks", "echo", "websocket", "cpu_ms_per_1k", "", False),
    ("echo p50 ms", "echo", "websocket", "p50_ms", "", False),
    ("echo p99 ms", "echo", "websocket", "p99_ms", "", False),
    ("echo acks/s", "echo", "polling", "acks_per_s", "", True),
    ("echo server CPU ms / 1k acks", "echo", "polling", "cpu_ms_per_1k", "", False),
    ("echo p50 ms", "echo", "polling", "p50_ms", "", False),
    ("echo p99 ms", "echo", "polling", "p99_ms", "", False),
    ("echo acks/s", "echo", "sse", "acks_per_s", "", True),
    ("echo p50 ms", "echo", "sse", "p50_ms", "", False),
    ("echo p99 ms", "echo", "sse", "p99_ms", "", False),
    ("broadcast p50 ms", "broadcast", "websocket", "p50_ms", "", False),
    ("broadcast p99 ms", "broadcast", "websocket", "p99_ms", "", False),
    ("broadcast p50 ms, vs peers that lost nothing", "broadcast", "websocket", "p50_ms", "lossless", False),
    ("broadcast p99 ms, vs peers that lost nothing", "broadcast", "websocket", "p99_ms", "lossless", False),
    ("broadcast deliveries/s", "broadcast", "websocket", "deliveries_per_s", "", True),
    ("broadcast loss", "broadcast", "websocket", "loss", "", False),
    ("broadcast members that failed to join", "broadcast", "websocket", "failures", "", False),
    ("connect: clients held", "connect", "websocket", "connected", "", True),
    ("connect: connects/s", "connect", "websocket", "connect_per_s", "", True),
    ("connect: RSS KiB per client", "connect", "websocket", "rss_per_conn_kib", "", False),
    ("connect: server threads (informational)", "connect", "websocket", "threads", "", None),
]


def placement(run):
    """Which pair of host cores a run had, from the load generator's probe before and after it
    (`xcpu_ns`, one-way cache-line transfer between the two CPUs): "close" (all under 60 ns),
    "distant" (all over 100 ns), or None (moved during the run, or not measured)."""
    ns = run.get("xcpu_ns") or [None]
    if all(v is not None and v < 60 for v in ns):
        return "close"
    if all(v is not None and v > 100 for v in ns):
        return "distant"
    return None


def ratios(ok, peer, metrics, indent):
    for metric in metrics:
        if not all(p[s].get(metric) for p in ok for s in ("tinysio", peer)):
            continue  # missing, or zero in some pair (a loss of 0): no ratio
        logs = [math.log(p["tinysio"][metric] / p[peer][metric]) for p in ok]
        mean, se = statistics.mean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
        lo, mid, hi = (math.exp(mean + k * se) for k in (-2, 0, 2))
        medians = [statistics.median(p[s][metric] for p in ok) for s in ("tinysio", peer)]
        print(f"{indent}{metric:14} {mid:.3f}x  (95 % interval {lo:.3f}-{hi:.3f})  "
              f"medians: tinysio {medians[0]:.2f}, {peer} {medians[1]:.2f}")


def load(path):
    """The JSON lines. An echo in which a client failed (it never connected, or an ack never
    came: socketioxide drops some events sent right after its CONNECT confirmation) counts as a
    failed run, like one that timed out: its acks/s and latencies measure the loss."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    for r in rows:
        if r.get("scenario") == "echo" and r.get("failures"):
            r.setdefault("error", f"{r['failures']} of its clients failed")
    return rows


def pairs(path, peer):
    """`bench/run.sh` with PAIRS: the geometric mean of the same-pair ratios tinysio / peer, with
    a 95 % interval (the log ratios' mean ± two standard errors), over all pairs and then over
    the pairs whose two runs both had the close, or both the distant, pair of host cores. A
    pair with a failed side is left out and counted."""
    by_round = {}
    for r in load(path):
        by_round.setdefault(r["round"], {})[r["server"]] = r
    sides = ("tinysio", peer)
    ok = [p for p in by_round.values() if all(s in p and "error" not in p[s] for s in sides)]
    first = ok[0]["tinysio"] if ok else {}
    print(f"{first.get('scenario')} {first.get('transport')} {first.get('clients')} clients, "
          f"tinysio / {peer}, {len(ok)} pairs ({len(by_round) - len(ok)} failed)"
          f"{', generator on CPU 0 and server on the others (PIN)' if first.get('pinned') else ''}")
    if len(ok) < 2:
        print("  an interval needs at least two pairs")
        return
    row = (first["scenario"], first["transport"])
    metrics = list(dict.fromkeys(t[3] for t in TABLE if (t[1], t[2]) == row))  # the table's
    ratios(ok, peer, metrics, "  ")
    for where in ("close", "distant"):
        same = [p for p in ok if placement(p["tinysio"]) == placement(p[peer]) == where]
        if len(same) >= 2:
            print(f"  {len(same)} pairs with both runs on the {where} pair of host cores:")
            ratios(same, peer, metrics, "    ")


if sys.argv[1] == "--pairs":
    pairs(sys.argv[2], sys.argv[3])
    sys.exit()

rows = load(sys.argv[1])

# A row that ran in several rounds shows each metric's median over the rounds that did not fail
# (a failed round is counted in "failed rounds" below the table); what must be zero (a
# broadcast's loss, its members that failed to join) shows the worst round instead.
WORST = {"loss", "failures", "members_whose_connection_failed"}
runs = {}
for r in rows:
    runs.setdefault((r["server"], r["scenario"], r["transport"], r["clients"]), []).append(r)


def median_of(rs):
    ok = [r for r in rs if "error" not in r]
    if not ok:
        return rs[-1]
    merged = dict(ok[0])
    for k, v in ok[0].items():
        vals = [r.get(k) for r in ok if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool) and len(vals) == len(ok):
            merged[k] = max(vals) if k in WORST else statistics.median(vals)
    merged["rounds"] = len(ok)
    return merged


by = {key: median_of(rs) for key, rs in runs.items()}
failed = {key: sum("error" in r for r in rs) for key, rs in runs.items()}
rounds = max((len(rs) for rs in runs.values()), default=1)


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float) and v.is_integer():  # a median of whole numbers (threads, clients held)
        v = int(v)
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return f"{v:,}"


if any(r.get("pinned") for r in rows):
    print("Load generator on CPU 0 and each server on the other CPUs (PIN=1; the generator runs on one thread);")
else:
    print("Load generator and server share the machine's 2 cores (the generator runs on one thread);")
print("all servers on 127.0.0.1, same generator, same handlers, same run. Ratio: tinysio ÷ best peer")
print("(best = highest where more is better, lowest where less is better); ✓ where tinysio leads or ties")
print("(a tie: the ratio rounds to 1.00×, the precision shown).")
if rounds > 1:
    rotated = len({r.get("place") for r in rows if r["server"] == "tinysio"}) > 1
    print(f"Every row ran in {rounds} interleaved rounds (Flask-SocketIO in the first only)"
          + (", the servers' order rotating by one place each round" if rotated else "") + "; each figure")
    print("is that server's median over its rounds (loss and failed joins: its worst round), and the")
    print("ratio is the median over the rounds of tinysio ÷ the best peer of the same round (seconds")
    print("apart, so the VM's drift cancels).")
print()
print("| measurement | transport | clients | tinysio | " + " | ".join(PEERS) + " | ratio |")
print("|---|---|---:|---:|" + "---:|" * len(PEERS) + "---:|")
sizes = sorted({r["clients"] for r in rows})
for label, scenario, transport, metric, only, higher in TABLE:
    for n in sizes:
        ours = by.get(("tinysio", scenario, transport, n))
        if ours is None:
            continue
        value = lambda r: None if r is None or "error" in r else r.get(metric)
        peers = [value(by.get((p, scenario, transport, n))) for p in PEERS]
        if only == "lossless":  # a peer that dropped messages did less work for its latency
            peers = [v if (by.get((p, scenario, transport, n)) or {}).get("loss") == 0 else None
                     for p, v in zip(PEERS, peers)]
        mine = value(ours)
        known = [p for p in peers if p is not None]
        ratio = "–"
        if mine is not None and known and higher is not None:
            pick = max if higher else min
            best = pick(known)
            if best == 0:
                ratio = "✓ =" if mine == 0 else "✗"
            else:
                r = mine / best
                # Several rounds: tinysio against the best peer of each round, then the median.
                per_round = []
                for mine_r in runs[("tinysio", scenario, transport, n)]:
                    if "error" in mine_r or mine_r.get(metric) is None:
                        continue
                    same = [q.get(metric) for peer in PEERS
                            for q in runs.get((peer, scenario, transport, n), [])
                            if q.get("round") == mine_r.get("round") and "error" not in q
                            and q.get(metric) is not None
                            and (only != "lossless" or q.get("loss") == 0)]
                    if same and pick(same) != 0:
                        per_round.append(mine_r[metric] / pick(same))
                if len(per_round) > 1:
                    r = statistics.median(per_round)
                # Judged at the precision shown: 0.9999x is printed as 1.00x and is a tie.
                ok = round(r, 2) >= 1 if higher else round(r, 2) <= 1
                ratio = f"{r:.2f}×" + (" ✓" if ok else "")
        print(f"| {label} | {transport} | {n:,} | {fmt(mine)} | " + " | ".join(fmt(p) for p in peers) + f" | {ratio} |")

# Where the host had the vCPUs decides some rows (README, "Where the host puts the VM's two
# vCPUs"): name the rounds in which tinysio's run was not on the close pair throughout.
moved = []
for (server, scenario, transport, n), rs in sorted(runs.items()):
    away = [r["round"] for r in rs if "error" not in r and "xcpu_ns" in r and placement(r) != "close"]
    if server == "tinysio" and away:
        moved.append(f"{scenario} {transport} {n}: {', '.join(map(str, away))}")
if moved and rounds > 1:
    print("\nRounds in which tinysio's run was not on the close pair of host cores throughout "
          "(`xcpu_ns`; the peers' are in results.jsonl): " + "; ".join(moved) + ".")

bad = [f"{k[0]} {k[1]} {k[2]} {k[3]}: {n}" for k, n in failed.items() if n]
if bad:
    print("\nFailed rounds (left out of the medians): " + "; ".join(bad) + ".")
