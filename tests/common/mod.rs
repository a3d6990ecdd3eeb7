//! Harness for the black-box tests: starts the real `tinysio` binary on a free port (the port
//! read from its first log line), and speaks raw HTTP and WebSocket to it.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use tungstenite::Message;
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Upper bound for anything a test waits on; a wait that hits it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Server {
    child: Child,
    pub addr: String,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, None, true)
    }

    /// Starts the server with at most `fds` open file descriptors (RLIMIT_NOFILE, soft and
    /// hard: the server cannot raise it).
    pub fn start_with_fd_limit(args: &[&str], fds: u64) -> Server {
        Server::start_with(args, Some((fds, fds)), true)
    }

    /// Starts the server with RLIMIT_NOFILE's soft limit `soft` and hard limit `hard`.
    pub fn start_with_fd_limits(args: &[&str], soft: u64, hard: u64) -> Server {
        Server::start_with(args, Some((soft, hard)), true)
    }

    /// Starts the server and closes the read end of its stderr after the first line, as
    /// `tinysio 2>&1 | head -1` or a log collector that died would: its writes then fail.
    pub fn start_then_close_log(args: &[&str]) -> Server {
        Server::start_with(args, None, false)
    }

    fn start_with(args: &[&str], fd_limit: Option<(u64, u64)>, keep_log: bool) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tinysio"));
        cmd.args(["--port", "0"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        if let Some((soft, hard)) = fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("start tinysio");
        let stderr = child.stderr.take().unwrap();
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        if keep_log {
            std::thread::spawn(move || {
                for line in lines {
                    sink.0.lock().unwrap().push(line);
                    sink.1.notify_all();
                }
            });
        } else {
            sink.0.lock().unwrap().extend(lines.next()); // then the read end is dropped
        }
        let mut server = Server {
            child,
            addr: String::new(),
            log,
        };
        let line = server.wait_log("listening on http://");
        server.addr = line
            .split("http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_nth(needle, 1)
    }

    /// Waits for the `nth` log line (counting from 1) containing `needle` and returns it.
    pub fn wait_log_nth(&self, needle: &str, nth: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        let (lines, cv) = &*self.log;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(line) = guard.iter().filter(|l| l.contains(needle)).nth(nth - 1) {
                return line.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "no log line with {needle:?}; log so far:\n{}",
                        guard.join("\n")
                    )
                });
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub fn log_text(&self) -> String {
        self.log.0.lock().unwrap().join("\n")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Thread count and open fds of the server, from /proc.
    pub fn threads_and_fds(&self) -> (usize, usize) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let threads = status.lines().find(|l| l.starts_with("Threads:")).unwrap()[8..]
            .trim()
            .parse()
            .unwrap();
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count();
        (threads, fds)
    }

    /// The server must still be alive and must never have panicked.
    pub fn assert_healthy(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "server exited:\n{}",
            self.log_text()
        );
        let log = self.log_text();
        assert!(!log.contains("panicked"), "server panicked:\n{log}");
        let (status, _, body) = http(&self.addr, "GET", "/health", &[], b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let r = request(addr, method, path, headers, body);
    (r.status, r.headers, r.body)
}

pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    tcp.write_all(&out).unwrap();
    read_response(&mut tcp)
}

pub fn read_response(tcp: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    parse_response(&raw)
        .unwrap_or_else(|| panic!("bad response: {:?}", String::from_utf8_lossy(&raw)))
}

pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An Engine.IO session over polling, on any path (`/socket.io/` or `/engine.io/`).
pub struct Polling {
    pub addr: String,
    pub path: String,
    pub sid: String,
    pub open: serde_json::Value,
}

impl Polling {
    pub fn open(server: &Server, path: &str) -> Polling {
        let (status, _, body) = http(
            &server.addr,
            "GET",
            &format!("{path}?EIO=4&transport=polling"),
            &[],
            b"",
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with('0'), "{text}");
        let open: serde_json::Value = serde_json::from_str(&text[1..]).unwrap();
        Polling {
            addr: server.addr.clone(),
            path: path.into(),
            sid: open["sid"].as_str().unwrap().into(),
            open,
        }
    }

    pub fn query(&self) -> String {
        format!("{}?EIO=4&transport=polling&sid={}", self.path, self.sid)
    }

    /// A GET on its own thread (it may wait for packets); join for (status, body).
    pub fn get_in_background(&self) -> std::thread::JoinHandle<(u16, Vec<u8>)> {
        let (addr, q) = (self.addr.clone(), self.query());
        std::thread::spawn(move || {
            let (status, _, body) = http(&addr, "GET", &q, &[], b"");
            (status, body)
        })
    }

    pub fn get(&self) -> (u16, String) {
        let (status, _, body) = http(&self.addr, "GET", &self.query(), &[], b"");
        (status, String::from_utf8(body).unwrap())
    }

    /// The next GET's packets, split on the record separator.
    pub fn packets(&self) -> Vec<String> {
        let (status, body) = self.get();
        assert_eq!(status, 200, "{body}");
        body.split('\x1e').map(String::from).collect()
    }

    pub fn post(&self, body: &str) -> (u16, String) {
        let (status, _, body) = http(&self.addr, "POST", &self.query(), &[], body.as_bytes());
        (status, String::from_utf8_lossy(&body).into())
    }

    /// Reads packets until one satisfies `pred`, answering pings on the way.
    pub fn until(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            for p in self.packets() {
                if pred(&p) {
                    return p;
                }
                if p == "2" {
                    self.post("3");
                }
            }
        }
        panic!("packet never came");
    }
}

/// Opens a WebSocket to `path_and_query` (with optional extra headers).
pub fn ws_connect(
    addr: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path_and_query}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    match tungstenite::client(req, tcp) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake interrupted"),
    }
}

/// A WebSocket session joined to `nsp` (`/` or `/movies`), its greeting event read: `auth`
/// on `/`, `on_connect` on `/movies`.
pub fn ws_in(addr: &str, nsp: &str) -> Ws {
    let mut ws = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    if nsp == "/" {
        ws_send(&mut ws, "40");
        ws_until(&mut ws, |t| t.starts_with("42[\"auth\""));
    } else {
        ws_send(&mut ws, &format!("40{nsp},"));
        let greeting = format!("42{nsp},[\"on_connect\"");
        ws_until(&mut ws, |t| t.starts_with(&greeting));
    }
    ws
}

pub fn ws_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("websocket read") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

pub fn ws_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        match ws.read().expect("websocket read") {
            Message::Binary(b) => return b.to_vec(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected binary, got {other:?}"),
        }
    }
}

/// Reads text frames until one satisfies `pred`, answering Engine.IO pings on the way.
pub fn ws_until(ws: &mut Ws, pred: impl Fn(&str) -> bool) -> String {
    loop {
        let t = ws_text(ws);
        if pred(&t) {
            return t;
        }
        if t == "2" {
            ws.send(Message::text("3")).unwrap();
        }
    }
}

/// A client's WebSocket frame (masked), `first` being the FIN/opcode byte; payload under 64 KiB.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = match payload.len() {
        n @ 0..=125 => vec![first, 0x80 | n as u8],
        n => [[first, 0x80 | 126].as_slice(), &(n as u16).to_be_bytes()].concat(),
    };
    f.extend([1, 2, 3, 4]);
    f.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    f
}

/// Shrinks a client socket's receive buffer to 4 KiB, so that a client that stops reading
/// fills the server's send path soon.
pub fn shrink_receive_buffer(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt on a live socket with a valid int.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

pub fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
}
