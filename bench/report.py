"""Turns bench/out/results.jsonl into the markdown table of README's performance section."""
import json
import sys

PEERS = ["socketioxide", "socket.io", "flask-socketio"]
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {(r["server"], r["scenario"], r["transport"], r["clients"]): r for r in rows}

# (label, scenario, transport, sizes, metric, unit, higher is better)
TABLE = [
    ("echo acks/s", "echo", "websocket", "acks_per_s", "", True),
    ("echo server CPU ms / 1k acks", "echo", "websocket", "cpu_ms_per_1k", "", False),
    ("echo p99 ms", "echo", "websocket", "p99_ms", "", False),
    ("echo acks/s", "echo", "polling", "acks_per_s", "", True),
    ("echo server CPU ms / 1k acks", "echo", "polling", "cpu_ms_per_1k", "", False),
    ("echo acks/s", "echo", "sse", "acks_per_s", "", True),
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


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return f"{v:,}"


print("Load generator and server share the machine's 2 cores (the generator runs on one thread);")
print("all servers on 127.0.0.1, same generator, same handlers, same run. Ratio: tinysio ÷ best peer")
print("(best = highest where more is better, lowest where less is better); ✓ where tinysio leads or ties.\n")
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
            best = max(known) if higher else min(known)
            if best == 0:
                ratio = "✓ =" if mine == 0 else "✗"
            else:
                r = mine / best
                ok = r >= 1 if higher else r <= 1
                ratio = f"{r:.2f}×" + (" ✓" if ok else "")
        print(f"| {label} | {transport} | {n:,} | {fmt(mine)} | " + " | ".join(fmt(p) for p in peers) + f" | {ratio} |")
