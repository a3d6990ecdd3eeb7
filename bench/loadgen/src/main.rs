//! Load generator for the benchmark. Speaks raw Engine.IO v4 / Socket.IO v5 over WebSocket,
//! long-polling and SSE, with bounded counts and durations, and prints one JSON line per run.
//!
//! loadgen --addr 127.0.0.1:5000 --pid PID --server NAME --scenario echo|broadcast|connect
//!         [--transport websocket|polling|sse] [--clients N] [--seconds S]
//!
//! It runs on one thread (tokio's current-thread runtime), so the server always has the other
//! core; server CPU is read from /proc/PID/stat before and after.
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Res<T> = Result<T, String>;

#[derive(Clone)]
struct Args {
    addr: String,
    pid: u32,
    server: String,
    scenario: String,
    transport: String,
    clients: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:5000".into(),
        pid: 0,
        server: "server".into(),
        scenario: "echo".into(),
        transport: "websocket".into(),
        clients: 10,
        seconds: 10,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let flag = pair[0].as_str();
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let Some(v) = pair.get(1).cloned() else {
            usage(&format!("{flag} needs a value"))
        };
        match flag {
            "--addr" => a.addr = v,
            "--pid" => a.pid = number(flag, &v),
            "--server" => a.server = v,
            "--scenario" => a.scenario = v,
            "--transport" => a.transport = v,
            "--clients" => a.clients = number(flag, &v),
            "--seconds" => a.seconds = number(flag, &v),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    a
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse().unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
}

const USAGE: &str = "usage: tinysio-loadgen [--addr HOST:PORT] [--pid SERVER_PID] [--server NAME]
       [--scenario echo|broadcast|connect] [--transport websocket|polling|sse]
       [--clients N] [--seconds S]   (bench/run.sh calls it; see README, Performance)";

/// A wrong argument would silently measure something else: say what was wrong, and how to call.
fn usage(why: &str) -> ! {
    eprintln!("tinysio-loadgen: {why}\n{USAGE}");
    std::process::exit(2)
}

// ── The server process, from /proc.

fn proc_stat(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks / 100.0, field("VmRSS:"), field("Threads:"))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0 // µs → ms
}

// ── A minimal HTTP/1.1 client (keep-alive, Content-Length or chunked, reconnects on close).

struct Http {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    fn new(addr: &str) -> Http {
        Http { addr: addr.into(), conn: None }
    }

    async fn request(&mut self, method: &str, path: &str, body: &str) -> Res<(u16, String)> {
        if self.conn.is_none() {
            let tcp = TcpStream::connect(&self.addr).await.map_err(|e| e.to_string())?;
            tcp.set_nodelay(true).ok();
            self.conn = Some(BufReader::new(tcp));
        }
        let conn = self.conn.as_mut().unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        conn.get_mut().write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if line.is_empty() {
            self.conn = None;
            return Err("connection closed".into());
        }
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("bad status")?;
        let mut close = line.starts_with("HTTP/1.0");
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            } else if l.starts_with("connection:") {
                close = l.contains("close");
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
                let n = usize::from_str_radix(line.trim(), 16).map_err(|e| e.to_string())?;
                let mut chunk = vec![0u8; n + 2];
                conn.read_exact(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length, 0);
            conn.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        }
        if close {
            self.conn = None;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

// ── One Engine.IO session on any transport; `recv` answers pings itself.

enum Transport {
    Ws(WebSocketStream<MaybeTlsStream<TcpStream>>),
    Polling { http: Http, sid: String },
    Sse { stream: BufReader<TcpStream>, post: Http, sid: String },
}

struct Session {
    t: Transport,
}

impl Session {
    async fn open(addr: &str, transport: &str) -> Res<Session> {
        let t = match transport {
            "websocket" => {
                let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
                // tungstenite's default read buffer is 128 KiB and each read zero-fills the spare
                // part of it: that memset was a third of this generator's CPU at 100 clients, and
                // the generator was the bottleneck. Packets here are tens of bytes.
                let cfg = WebSocketConfig::default().read_buffer_size(4096);
                let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(cfg), true)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut s = Session { t: Transport::Ws(ws) };
                let open = s.recv().await?;
                if !open.iter().any(|p| p.starts_with('0')) {
                    return Err(format!("no open packet: {open:?}"));
                }
                return Ok(s);
            }
            "polling" => {
                let mut http = Http::new(addr);
                let (status, body) = http.request("GET", "/socket.io/?EIO=4&transport=polling", "").await?;
                if status != 200 {
                    return Err(format!("handshake {status}"));
                }
                Transport::Polling { http, sid: sid_of(&body)? }
            }
            "sse" => {
                let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                tcp.set_nodelay(true).ok();
                let mut stream = BufReader::new(tcp);
                let req = format!("GET /socket.io/?EIO=4&transport=sse HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
                stream.get_mut().write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
                let mut line = String::new();
                loop {
                    line.clear();
                    stream.read_line(&mut line).await.map_err(|e| e.to_string())?;
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                let mut s = Session { t: Transport::Sse { stream, post: Http::new(addr), sid: String::new() } };
                let open = s.recv().await?;
                let sid = sid_of(open.first().ok_or("no open event")?)?;
                if let Transport::Sse { sid: slot, .. } = &mut s.t {
                    *slot = sid;
                }
                return Ok(s);
            }
            other => return Err(format!("unknown transport {other}")),
        };
        Ok(Session { t })
    }

    async fn send(&mut self, packet: &str) -> Res<()> {
        match &mut self.t {
            Transport::Ws(ws) => ws.send(Message::text(packet)).await.map_err(|e| e.to_string()),
            Transport::Polling { http, sid } => post(http, "polling", sid, packet).await,
            Transport::Sse { post: http, sid, .. } => post(http, "sse", sid, packet).await,
        }
    }

    /// The next packets (one frame, one poll, or one event), pings answered.
    async fn recv(&mut self) -> Res<Vec<String>> {
        loop {
            let packets: Vec<String> = match &mut self.t {
                Transport::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Text(t))) => vec![t.to_string()],
                    Some(Ok(Message::Close(_))) | None => return Err("websocket closed".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                },
                Transport::Polling { http, sid } => {
                    let (status, body) = http.request("GET", &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"), "").await?;
                    if status != 200 {
                        return Err(format!("poll {status}"));
                    }
                    body.split('\x1e').map(String::from).collect()
                }
                Transport::Sse { stream, .. } => {
                    let mut data = Vec::new();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
                            return Err("sse stream ended".into());
                        }
                        let l = line.trim_end_matches(['\r', '\n']);
                        if l.is_empty() {
                            if data.is_empty() {
                                continue;
                            }
                            break;
                        }
                        if let Some(d) = l.strip_prefix("data: ") {
                            data.push(d.to_string());
                        }
                    }
                    vec![data.join("\n")]
                }
            };
            let mut out = Vec::with_capacity(packets.len());
            for p in packets {
                match p.as_str() {
                    "2" => self.send("3").await?,
                    "6" => {}
                    "1" => return Err("server closed the session".into()),
                    _ => out.push(p),
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// CONNECTs a namespace and waits for the server's confirmation.
    async fn connect(&mut self, nsp: &str) -> Res<()> {
        let prefix = if nsp == "/" { String::new() } else { format!("{nsp},") };
        self.send(&format!("40{prefix}")).await?;
        let want = format!("40{prefix}{{");
        loop {
            for p in self.recv().await? {
                if p.starts_with(&want) {
                    return Ok(());
                }
                if p.starts_with("44") {
                    return Err(p);
                }
            }
        }
    }

    /// Waits for the packet that starts with `prefix` (other packets are passed over).
    async fn until(&mut self, prefix: &str) -> Res<String> {
        loop {
            for p in self.recv().await? {
                if p.starts_with(prefix) {
                    return Ok(p);
                }
            }
        }
    }
}

async fn post(http: &mut Http, transport: &str, sid: &str, packet: &str) -> Res<()> {
    let (status, body) = http.request("POST", &format!("/socket.io/?EIO=4&transport={transport}&sid={sid}"), packet).await?;
    match status {
        200 => Ok(()),
        _ => Err(format!("post {status} {body}")),
    }
}

fn sid_of(open: &str) -> Res<String> {
    let v: Value = serde_json::from_str(open.get(1..).ok_or("empty open")?).map_err(|e| e.to_string())?;
    Ok(v["sid"].as_str().ok_or("no sid")?.to_string())
}

// ── Scenarios.

/// Each client loops `message-with-ack` on `/` for the duration: acks/s and latency.
async fn echo(a: &Args) -> Value {
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut sessions = Vec::new();
    let mut failures = 0;
    for _ in 0..a.clients {
        let opened = async {
            let mut s = Session::open(&a.addr, &a.transport).await?;
            s.connect("/").await?;
            Ok::<_, String>(s)
        };
        match tokio::time::timeout(Duration::from_secs(5), opened).await {
            Ok(Ok(s)) => sessions.push(s),
            _ => failures += 1,
        }
    }
    let (cpu0, _, _) = proc_stat(a.pid);
    let start = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut s| {
            tokio::task::spawn_local(async move {
                let mut lat = Vec::new();
                let mut id = 0u64;
                while Instant::now() < deadline {
                    id += 1;
                    let t0 = Instant::now();
                    if s.send(&format!("42{id}[\"message-with-ack\",\"hello, bench\"]")).await.is_err() {
                        return (lat, true);
                    }
                    // A server that loses the message (socketioxide drops some sent right
                    // after its CONNECT confirmation) costs this client, not a hung run.
                    let want = format!("43{id}[");
                    let ack = tokio::time::timeout(Duration::from_secs(5), s.until(&want)).await;
                    if !matches!(ack, Ok(Ok(_))) {
                        return (lat, true);
                    }
                    lat.push(t0.elapsed().as_micros() as u64);
                }
                (lat, false)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        let (l, failed) = t.await.unwrap_or_default();
        failures += failed as usize;
        lat.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu1, rss, threads) = proc_stat(a.pid);
    lat.sort_unstable();
    let acks = lat.len();
    json!({
        "acks": acks, "seconds": elapsed, "acks_per_s": acks as f64 / elapsed,
        "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
        "cpu_s": cpu1 - cpu0, "cpu_ms_per_1k": (cpu1 - cpu0) * 1000.0 / (acks as f64 / 1000.0).max(1e-9),
        "rss_kib": rss, "threads": threads, "failures": failures,
    })
}

fn micros_since(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

/// N members join `bench` on /movies; one sender chats every 20 ms, 200 times; every member's
/// receive latency, deliveries per second, loss.
async fn broadcast(a: &Args) -> Value {
    const SENDS: usize = 200;
    let base = Instant::now();
    let done_by = Arc::new(std::sync::Mutex::new(Instant::now() + Duration::from_secs(3600)));
    // Each member starts reading (and answering pings) as soon as it has joined, as a real
    // client does: a member left unread while the others join would miss its server's
    // heartbeat and be closed, which is the harness's fault, not the server's.
    let reader = |mut s: Session| {
        let done_by = done_by.clone();
        tokio::task::spawn_local(async move {
            let mut lat = Vec::with_capacity(SENDS);
            let mut last = 0;
            let mut ended = None;
            while lat.len() < SENDS {
                let left = done_by.lock().unwrap().saturating_duration_since(Instant::now());
                let packets = match tokio::time::timeout(left, s.recv()).await {
                    Ok(Ok(packets)) => packets,
                    Ok(Err(e)) => {
                        ended = Some(e);
                        break;
                    }
                    Err(_) => break,
                };
                for p in packets {
                    // 42/movies,["chat",{"room":"bench","text":"<seq>:<µs>",…}]
                    if let Some(at) = p.find("\"text\":\"") {
                        let rest = &p[at + 8..];
                        let sent: u64 = rest.split(':').nth(1).and_then(|v| v.split('"').next()).and_then(|v| v.parse().ok()).unwrap_or(0);
                        last = micros_since(base);
                        lat.push(last.saturating_sub(sent));
                    }
                }
            }
            // The member stays connected until every member is done: a member that left
            // now would run the server's disconnect handlers (tinysio's app announces the
            // room's new member list) inside the measured window, for the others.
            (lat, last, ended, s)
        })
    };
    let mut readers = Vec::new();
    let mut failures = 0;
    for _ in 0..a.clients {
        // `join` goes out right after the CONNECT confirmation; a server that loses it (or
        // its ack) costs a failure here, not a hung run.
        let joined = async {
            let mut s = Session::open(&a.addr, "websocket").await?;
            s.connect("/movies").await?;
            s.send("42/movies,1[\"join\",\"bench\"]").await?;
            s.until("43/movies,1").await?;
            Ok::<_, String>(s)
        };
        match tokio::time::timeout(Duration::from_secs(5), joined).await {
            Ok(Ok(s)) => readers.push(reader(s)),
            _ => failures += 1,
        }
    }
    let expected = readers.len() * SENDS;
    let mut sender = match Session::open(&a.addr, "websocket").await {
        Ok(s) => s,
        Err(e) => return json!({ "error": e }),
    };
    let setup = async {
        sender.connect("/movies").await?;
        sender.send("42/movies,[\"identify\",\"sender\"]").await?;
        sender.send("42/movies,1[\"join\",\"bench\"]").await?;
        sender.until("43/movies,1").await
    };
    match tokio::time::timeout(Duration::from_secs(5), setup).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return json!({ "error": e }),
        Err(_) => return json!({ "error": "the sender's join was never acked" }),
    }
    // The sender's own copies are read (and dropped) so its socket never backs up.
    let (tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let (cpu0, _, _) = proc_stat(a.pid);
    // The window runs from here, just before the first chat (the interval's first tick is
    // immediate), to the last delivery, so deliveries/s is the server's: the harness's own
    // waits after the last chat stay out of it.
    let first_sent = micros_since(base);
    let sending = tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for seq in 0..SENDS {
            tick.tick().await;
            let packet = format!("42/movies,[\"chat\",\"bench\",\"{seq}:{}\"]", micros_since(base));
            if sender.send(&packet).await.is_err() {
                break;
            }
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::ZERO, sender.recv()).await {}
        }
        loop {
            tokio::select! {
                _ = &mut stop => break,
                r = sender.recv() => if r.is_err() { break },
            }
        }
    });
    let send_time = Duration::from_millis(20 * SENDS as u64);
    tokio::time::sleep(send_time).await;
    *done_by.lock().unwrap() = Instant::now() + Duration::from_secs(10);
    let mut lat = Vec::with_capacity(expected);
    let (mut reader_errors, mut first_error) = (0, None);
    let mut members = Vec::with_capacity(readers.len());
    let mut last_delivery = first_sent;
    for r in readers {
        let Ok((got, last, ended, s)) = r.await else { continue };
        lat.extend(got);
        last_delivery = last_delivery.max(last);
        members.push(s);
        if let Some(e) = ended {
            reader_errors += 1;
            first_error.get_or_insert(e);
        }
    }
    let elapsed = (last_delivery - first_sent).max(1) as f64 / 1e6;
    let _ = tx.send(());
    let _ = sending.await;
    let (cpu1, rss, threads) = proc_stat(a.pid);
    lat.sort_unstable();
    json!({
        "deliveries": lat.len(), "expected": expected, "loss": expected - lat.len().min(expected),
        "deliveries_per_s": lat.len() as f64 / elapsed, "seconds": elapsed,
        "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
        "cpu_s": cpu1 - cpu0, "rss_kib": rss, "threads": threads, "failures": failures,
        "members_whose_connection_failed": reader_errors, "first_error": first_error,
    })
}

/// N clients connect /movies over WebSocket and stay: connect rate, failures, and the
/// server's RSS per connection and threads at rest.
async fn connect(a: &Args) -> Value {
    let (_, rss0, _) = proc_stat(a.pid);
    let start = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (0..a.clients)
        .map(|_| {
            let (addr, limit) = (a.addr.clone(), limit.clone());
            tokio::task::spawn_local(async move {
                let permit = limit.acquire_owned().await.ok()?;
                let attempt = async {
                    let mut s = Session::open(&addr, "websocket").await?;
                    s.connect("/movies").await?;
                    Ok::<_, String>(s)
                };
                let s = tokio::time::timeout(Duration::from_secs(30), attempt).await.ok()?.ok();
                drop(permit);
                s
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            held.push(s);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await; // at rest
    let (_, rss1, threads) = proc_stat(a.pid);
    let n = held.len();
    json!({
        "connected": n, "failures": a.clients - n, "seconds": elapsed, "connect_per_s": n as f64 / elapsed,
        "rss_kib": rss1, "rss_per_conn_kib": (rss1.saturating_sub(rss0)) as f64 / (n.max(1) as f64), "threads": threads,
    })
}

// ── Where the host put the VM's two vCPUs.

/// One-way transfer of a cache line between the first two CPUs this process may use, in ns:
/// two threads, pinned one to each, bounce a counter; the fastest of eight batches counts, so
/// a thread preempted by the server's own work does not inflate it. The host moves this VM's
/// two vCPUs between a close pair of cores (~30 ns) and a distant one (~160 ns), and a thread
/// per connection pays for the distance on every wake-up it makes across them, so each run
/// records which pair it had. None where there is one CPU or pinning fails.
fn xcpu_ns() -> Option<f64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    const TRIPS: u64 = 25_000;
    const BATCHES: u64 = 8;
    // SAFETY: cpu_set_t is plain data; the calls get its size and a pointer to it.
    let cpus: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).take(2).collect()
    };
    let [a, b] = cpus[..] else { return None };
    fn pin(cpu: usize) -> bool {
        // SAFETY: as above; pid 0 is the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0
        }
    }
    fn wait_for(line: &AtomicU64, v: u64) {
        while line.load(Ordering::Acquire) != v {
            std::hint::spin_loop();
        }
    }
    // The near side pins itself before the far one starts, and the far side signals that it
    // is pinned before either spins, so neither spins on a CPU its partner needs.
    let near = std::thread::spawn(move || -> Option<f64> {
        if !pin(a) {
            return None;
        }
        let line = Arc::new(AtomicU64::new(0));
        let far = {
            let line = line.clone();
            std::thread::spawn(move || {
                if !pin(b) {
                    return line.store(u64::MAX, Ordering::Release);
                }
                line.store(1, Ordering::Release);
                for i in 0..TRIPS * BATCHES {
                    wait_for(&line, 2 * i + 2);
                    line.store(2 * i + 3, Ordering::Release);
                }
            })
        };
        while line.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        if line.load(Ordering::Acquire) == u64::MAX {
            let _ = far.join();
            return None;
        }
        let mut fastest = f64::MAX;
        for batch in 0..BATCHES {
            let start = Instant::now();
            for i in batch * TRIPS..(batch + 1) * TRIPS {
                line.store(2 * i + 2, Ordering::Release);
                wait_for(&line, 2 * i + 3);
            }
            fastest = fastest.min(start.elapsed().as_nanos() as f64 / (2 * TRIPS) as f64);
        }
        let _ = far.join();
        Some(fastest)
    });
    near.join().ok().flatten()
}

fn main() {
    let a = args();
    let xcpu_start = xcpu_ns();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let mut result = local.block_on(&rt, async {
        match a.scenario.as_str() {
            "echo" => echo(&a).await,
            "broadcast" => broadcast(&a).await,
            "connect" => connect(&a).await,
            other => json!({ "error": format!("unknown scenario {other}") }),
        }
    });
    let tags = json!({ "server": a.server, "scenario": a.scenario, "transport": a.transport, "clients": a.clients });
    if let (Value::Object(r), Value::Object(t)) = (&mut result, tags) {
        for (k, v) in t.into_iter().rev() {
            r.shift_insert(0, k, v);
        }
        // Before and after: the host can move the vCPUs during a run.
        let round = |ns: Option<f64>| ns.map(|ns| (ns * 10.0).round() / 10.0);
        r.insert("xcpu_ns".into(), json!([round(xcpu_start), round(xcpu_ns())]));
    }
    println!("{result}");
}
