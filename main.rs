//! tinysio — a Socket.IO v5 / Engine.IO v4 server in one file.
//!
//! Modules, in reading order (each one uses only those above it):
//!
//! | module   | owns                                                            |
//! |----------|-----------------------------------------------------------------|
//! | `config` | flags, environment variables, defaults, the log macro           |
//! | `eio`    | Engine.IO packet codec and the shared outbound packet (`Out`)   |
//! | `sio`    | Socket.IO packet codec (types, namespaces, ack ids, attachments)|
//! | `http`   | the HTTP/1.1 front: request parsing, responses, query, CORS     |
//! | `engine` | sessions, the three transports, heartbeat, timers, the one close|
//! | `hub`    | namespaces, sockets, rooms, acks both ways, broadcast           |
//! | `app`    | the services: `/` echo, `/movies` watch party, `/custom`        |
//! | `server` | the accept loop, routing, shutdown                              |
//!
//! Threads: the main thread accepts (it keeps the process's name); one connection thread per
//! TCP connection (it reads requests, and for a WebSocket reads frames for the life of the
//! socket; started by `spawn_detached`, named after the peer's address); one `timers` thread
//! (heartbeats, connect and ack timeouts, housekeeping); a `ws-writer` thread only while a
//! WebSocket's kernel buffer is full; one `signals` thread waiting for SIGINT/SIGTERM.
//!
//! One message, socket to handler and back:
//!
//! ```text
//!  conn thread reads a frame ─► eio::decode ─► Engine::on_packet ─► Hub::message ─► sio::decode
//!      ─► Namespace handler (app) ─► Socket::emit ─► sio::encode once into eio::Out (Arc)
//!      ─► Session::send_all ─► WebSocket: gathered while the frame is handled, then one
//!                            │  non-blocking sendmsg; backlog + writer if the socket is full
//!                            └► polling / SSE: the session queue, drained by the waiting GET
//! ```

// One clear message instead of a page of unresolved names from `libc`.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!(
    "tinysio runs on Linux with glibc: it uses SCHED_BATCH, MSG_NOSIGNAL, madvise guard pages, \
     /proc and glibc's malloc tuning. On macOS or Windows, build and run it in a Linux VM or \
     a container from a glibc-based image (README, \"The two commands\")."
);

// ───────────────────────────────────────────────────────────────────────────────────────────
mod config {
    //! Flags and environment variables, their defaults, and logging. Reads no socket.
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::Duration;

    /// Every flag: name, default, help. `--name value`, `--name=value` or `TINYSIO_NAME`.
    pub const FLAGS: &[(&str, &str, &str)] = &[
        ("host", "127.0.0.1", "address to listen on"),
        (
            "port",
            "5000",
            "port to listen on (0 picks a free one; the log says which)",
        ),
        (
            "ping-interval",
            "25000",
            "ms between server pings (Engine.IO pingInterval)",
        ),
        (
            "ping-timeout",
            "20000",
            "ms to wait for a pong after a ping is queued",
        ),
        (
            "max-payload",
            "1000000",
            "largest message or HTTP body accepted, bytes",
        ),
        (
            "max-connections",
            "12000",
            "open TCP connections; beyond it 503 + Retry-After",
        ),
        (
            "max-sessions",
            "24000",
            "Engine.IO sessions at once on each endpoint; a handshake beyond it gets 503 + Retry-After",
        ),
        (
            "allowed-origins",
            "",
            "comma-separated Origins; '*' allows any; empty: same origin and null",
        ),
        (
            "log-level",
            "info",
            "error, warn, info or debug (debug adds refusals and upgrade steps; no level logs payloads)",
        ),
        (
            "connect-timeout",
            "45000",
            "ms a client has to CONNECT a namespace after the handshake",
        ),
        (
            "max-header-bytes",
            "8192",
            "request head size; beyond it 431",
        ),
        (
            "max-request-line",
            "4096",
            "request line length; beyond it 414",
        ),
        (
            "header-timeout",
            "10000",
            "ms to receive a whole request head (slowloris guard)",
        ),
        (
            "idle-timeout",
            "30000",
            "ms a keep-alive connection may sit idle between requests",
        ),
        (
            "max-queue-bytes",
            "4194304",
            "outbound bytes queued per session before it is closed",
        ),
        (
            "max-queue-packets",
            "8192",
            "outbound packets queued per session before it is closed",
        ),
        (
            "socket-send-buffer",
            "0",
            "SO_SNDBUF of client sockets, bytes (0: the kernel's autotuning)",
        ),
        (
            "max-writers",
            "2048",
            "WebSocket writer threads at once (slow consumers) before closing",
        ),
        (
            "max-users",
            "100000",
            "entries of the /movies user table; past it the oldest session must identify again",
        ),
        (
            "user-ttl",
            "600",
            "seconds a /movies user entry outlives its session's last socket",
        ),
        (
            "max-online-names",
            "50",
            "names a /movies presence list (`online`) carries; how many more are in the room is in its `more`",
        ),
        (
            "max-namespaces",
            "32",
            "namespaces one Engine.IO session may join",
        ),
        (
            "max-pending-acks",
            "256",
            "acks the server awaits from one socket at once; past it an emit with ack fails at once",
        ),
        (
            "max-rooms",
            "64",
            "rooms one socket may be in at once; past it a join is refused",
        ),
        (
            "max-attachments",
            "64",
            "binary attachments in one Socket.IO packet",
        ),
        (
            "max-binary-bytes",
            "4194304",
            "bytes of binary attachments in one Socket.IO packet, all together",
        ),
        (
            "max-json-depth",
            "32",
            "nesting of arrays and objects in one packet (bounds the parser's recursion)",
        ),
        (
            "max-packets",
            "512",
            "Engine.IO packets in one polling or SSE POST",
        ),
        (
            "sse-replay",
            "2048",
            "SSE packets kept for Last-Event-ID resume",
        ),
        (
            "sse-replay-bytes",
            "1048576",
            "bytes of SSE packets kept for Last-Event-ID resume",
        ),
        (
            "shutdown-timeout",
            "5000",
            "ms to flush close packets on SIGINT/SIGTERM before exit",
        ),
        (
            "thread-stack",
            "262144",
            "stack size of connection threads (and of the timers and signals threads, which run handlers too), bytes",
        ),
        (
            "thread-policy",
            "batch",
            "scheduling of connection threads: batch (a woken thread waits for the running one to block: fewer switches) or normal",
        ),
        (
            "spin-us",
            "60",
            "µs a connection's thread polls its socket for the next message or request before it blocks, while connections are fewer than CPUs (0: never)",
        ),
    ];
    /// Boolean flags: present or absent.
    pub const SWITCHES: &[(&str, &str)] = &[
        (
            "conformance",
            "run as the official protocol test suites expect (PROTOCOL.md §5)",
        ),
        ("help", "print this help"),
    ];

    #[derive(Clone, Debug)]
    pub struct Config {
        pub host: String,
        pub port: u16,
        pub ping_interval: Duration,
        pub ping_timeout: Duration,
        pub max_payload: usize,
        pub max_connections: usize,
        pub max_sessions: usize,
        /// Empty: same origin and `null`. Contains "*": any origin.
        pub allowed_origins: Vec<String>,
        pub connect_timeout: Duration,
        pub max_header_bytes: usize,
        pub max_request_line: usize,
        pub header_timeout: Duration,
        pub idle_timeout: Duration,
        pub max_queue_bytes: usize,
        pub max_queue_packets: usize,
        pub socket_send_buffer: usize,
        pub max_writers: usize,
        pub max_namespaces: usize,
        pub max_pending_acks: usize,
        pub max_rooms: usize,
        pub max_users: usize,
        pub max_online_names: usize,
        pub user_ttl: Duration,
        pub max_attachments: usize,
        pub max_binary_bytes: usize,
        pub max_json_depth: usize,
        pub max_packets: usize,
        pub sse_replay: usize,
        pub sse_replay_bytes: usize,
        pub shutdown_timeout: Duration,
        pub thread_stack: usize,
        /// Connection threads run under SCHED_BATCH (`--thread-policy batch`).
        pub batch_threads: bool,
        /// How long an idle connection thread (WebSocket or keep-alive HTTP) polls before it
        /// blocks (`--spin-us`).
        pub spin: Duration,
        pub conformance: bool,
    }

    pub fn help() -> String {
        let mut s = String::from(
            "tinysio: a Socket.IO v5 / Engine.IO v4 server (WebSocket, long-polling, SSE)\n\n\
             usage: tinysio [--flag value]...   (every flag also reads TINYSIO_FLAG_NAME)\n\n",
        );
        for (name, default, help) in FLAGS {
            s.push_str(&format!("  --{name:<18} {help} [default: {default}]\n"));
        }
        for (name, help) in SWITCHES {
            s.push_str(&format!("  --{name:<18} {help}\n"));
        }
        s
    }

    fn env_name(flag: &str) -> String {
        format!("TINYSIO_{}", flag.to_uppercase().replace('-', "_"))
    }

    /// Parses arguments (without the program name) over environment variables over defaults.
    /// `--help` comes back as `Err` holding the help text (main prints it and exits 0).
    pub fn parse(
        args: Vec<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        let mut given: Vec<(String, String)> = Vec::new();
        let mut switches: Vec<String> = Vec::new();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument '{arg}' (flags start with --)"));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if SWITCHES.iter().any(|(n, _)| *n == name) {
                switches.push(name);
            } else if FLAGS.iter().any(|(n, _, _)| *n == name) {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or(format!("--{name} needs a value"))?,
                };
                given.push((name, value));
            } else {
                return Err(format!("unknown flag --{name} (see --help)"));
            }
        }
        let get = |name: &str| -> String {
            if let Some((_, v)) = given.iter().rev().find(|(n, _)| n == name) {
                return v.clone();
            }
            if let Some(v) = env(&env_name(name)) {
                return v;
            }
            FLAGS
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|f| f.1.to_string())
                .unwrap_or_default()
        };
        let num = |name: &str| -> Result<u64, String> {
            let v = get(name);
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("--{name}: '{v}' is not a whole number"))
        };
        let ms = |name: &str| num(name).map(Duration::from_millis);
        let size = |name: &str| num(name).map(|n| n as usize);
        let switch = |name: &str| {
            switches.iter().any(|s| s == name) || env(&env_name(name)).is_some_and(|v| v == "1")
        };
        if switch("help") {
            return Err(help());
        }
        let level = get("log-level");
        set_level(match level.as_str() {
            "error" => 0,
            "warn" => 1,
            "info" => 2,
            "debug" => 3,
            _ => {
                return Err(format!(
                    "--log-level: '{level}' is not error, warn, info or debug"
                ))
            }
        });
        let conformance = switch("conformance");
        let origins: Vec<String> = get("allowed-origins")
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let mut cfg = Config {
            host: get("host"),
            port: num("port")?
                .try_into()
                .map_err(|_| "--port: out of range".to_string())?,
            ping_interval: ms("ping-interval")?,
            ping_timeout: ms("ping-timeout")?,
            max_payload: size("max-payload")?,
            max_connections: size("max-connections")?,
            max_sessions: size("max-sessions")?,
            allowed_origins: origins,
            connect_timeout: ms("connect-timeout")?,
            max_header_bytes: size("max-header-bytes")?,
            max_request_line: size("max-request-line")?,
            header_timeout: ms("header-timeout")?,
            idle_timeout: ms("idle-timeout")?,
            max_queue_bytes: size("max-queue-bytes")?,
            max_queue_packets: size("max-queue-packets")?,
            socket_send_buffer: size("socket-send-buffer")?,
            max_writers: size("max-writers")?,
            max_namespaces: size("max-namespaces")?,
            max_pending_acks: size("max-pending-acks")?,
            max_rooms: size("max-rooms")?,
            max_users: size("max-users")?,
            max_online_names: size("max-online-names")?,
            user_ttl: num("user-ttl").map(Duration::from_secs)?,
            max_attachments: size("max-attachments")?,
            max_binary_bytes: size("max-binary-bytes")?,
            max_json_depth: size("max-json-depth")?,
            max_packets: size("max-packets")?,
            sse_replay: size("sse-replay")?,
            sse_replay_bytes: size("sse-replay-bytes")?,
            shutdown_timeout: ms("shutdown-timeout")?,
            thread_stack: size("thread-stack")?.max(64 * 1024),
            batch_threads: match get("thread-policy").as_str() {
                "batch" => true,
                "normal" => false,
                other => return Err(format!("--thread-policy: '{other}' is not batch or normal")),
            },
            spin: num("spin-us").map(Duration::from_micros)?,
            conformance,
        };
        if conformance {
            // PROTOCOL.md §5: what the official test suites expect.
            cfg.ping_interval = Duration::from_millis(300);
            cfg.ping_timeout = Duration::from_millis(200);
            cfg.max_payload = 1_000_000;
            cfg.allowed_origins = vec!["*".into()];
            // The suites race two connections and expect them served in the order sent, as
            // one event loop would; a batch thread woken on the client's CPU waits behind it.
            cfg.batch_threads = false;
        }
        if cfg.ping_interval.is_zero() || cfg.ping_timeout.is_zero() {
            return Err("--ping-interval and --ping-timeout must be above 0".into());
        }
        Ok(cfg)
    }

    static LEVEL: AtomicU8 = AtomicU8::new(2);
    pub fn set_level(level: u8) {
        LEVEL.store(level, Ordering::Relaxed);
    }
    pub fn enabled(level: u8) -> bool {
        level <= LEVEL.load(Ordering::Relaxed)
    }
    pub const ERROR: u8 = 0;
    pub const WARN: u8 = 1;
    pub const INFO: u8 = 2;
    pub const DEBUG: u8 = 3;
    pub fn tag(level: u8) -> &'static str {
        ["error", "warn", "info", "debug"][level.min(3) as usize]
    }

    /// Writes one log line to stderr in one `write`. A line that cannot be written (stderr
    /// closed, or a pipe whose reader is gone) is dropped: `eprintln!` would panic, and take
    /// down whichever thread logged, the timers and signals threads included.
    pub fn write_log(level: u8, message: std::fmt::Arguments) {
        use std::io::Write;
        let line = format!("tinysio {} {message}\n", tag(level));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    /// `log!(INFO, "...")`: one line on stderr, `tinysio <level> <message>`.
    macro_rules! log {
        ($level:expr, $($arg:tt)*) => {
            if $crate::config::enabled($level) {
                $crate::config::write_log($level, format_args!($($arg)*));
            }
        };
    }
    pub(crate) use log;

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn readme_lists_every_flag_with_its_default_in_order() {
            let readme = include_str!("README.md");
            let rows: Vec<(&str, &str)> = readme
                .lines()
                .filter(|l| l.starts_with("| `--"))
                .filter_map(|l| {
                    let mut cells = l.split('|').skip(1).map(str::trim);
                    let name = cells.next()?.trim_matches('`').strip_prefix("--")?;
                    Some((name, cells.next()?))
                })
                .collect();
            let mut want: Vec<(&str, &str)> = FLAGS
                .iter()
                .map(|(name, default, _)| {
                    (
                        *name,
                        if default.is_empty() {
                            "(empty)"
                        } else {
                            default
                        },
                    )
                })
                .collect();
            want.extend([("conformance", "off"), ("help", "")]);
            assert_eq!(rows, want);
        }

        #[test]
        fn defaults_match_the_engine_io_handshake_defaults() {
            let c = parse(vec![], |_| None).unwrap();
            assert_eq!(c.port, 5000);
            assert_eq!(c.ping_interval, Duration::from_millis(25000));
            assert_eq!(c.ping_timeout, Duration::from_millis(20000));
            assert_eq!(c.max_payload, 1_000_000);
            assert!(c.allowed_origins.is_empty());
        }

        #[test]
        fn flags_beat_environment_beat_defaults() {
            let env = |k: &str| (k == "TINYSIO_PORT").then(|| "6000".to_string());
            assert_eq!(parse(vec![], env).unwrap().port, 6000);
            let args = vec!["--port=7000".to_string()];
            assert_eq!(parse(args, env).unwrap().port, 7000);
            let args = vec![
                "--port".into(),
                "8000".into(),
                "--allowed-origins".into(),
                "*".into(),
            ];
            let c = parse(args, |_| None).unwrap();
            assert_eq!((c.port, c.allowed_origins), (8000, vec!["*".to_string()]));
        }

        #[test]
        fn bad_flags_are_refused_with_a_reason() {
            for (args, says) in [
                (vec!["--nope"], "unknown flag"),
                (vec!["--port", "x"], "not a whole number"),
                (vec!["--port"], "needs a value"),
                (vec!["port"], "unexpected argument"),
                (vec!["--log-level", "loud"], "log-level"),
                (vec!["--thread-policy", "fifo"], "thread-policy"),
                (vec!["--help"], "usage"),
            ] {
                let args = args.into_iter().map(String::from).collect();
                let err = parse(args, |_| None).unwrap_err();
                assert!(err.contains(says), "{err}");
            }
            set_level(INFO);
        }

        #[test]
        fn conformance_profile_sets_the_suite_timings() {
            let c = parse(vec!["--conformance".into()], |_| None).unwrap();
            assert_eq!(c.ping_interval, Duration::from_millis(300));
            assert_eq!(c.ping_timeout, Duration::from_millis(200));
            assert_eq!(c.allowed_origins, vec!["*".to_string()]);
            assert!(!c.batch_threads);
        }
    }
}

use config::{log, DEBUG, ERROR, INFO, WARN};

// ───────────────────────────────────────────────────────────────────────────────────────────
mod eio {
    //! Engine.IO v4 codec: packets to and from bytes, payloads, base64. Pure: never touches a
    //! socket. Also `Out`, the encoded outbound packet every transport shares.
    use std::fmt;
    use std::sync::Arc;

    pub const SEPARATOR: u8 = 0x1e;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Packet {
        Open(String),
        Close,
        Ping(String),
        Pong(String),
        Message(String),
        Binary(Vec<u8>),
        Upgrade,
        Noop,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum DecodeError {
        Empty,
        UnknownType(u8),
        BadBase64,
        NotUtf8,
        TooManyPackets(usize),
    }

    impl fmt::Display for DecodeError {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            match self {
                DecodeError::Empty => write!(f, "empty Engine.IO packet"),
                DecodeError::UnknownType(c) => {
                    write!(f, "unknown Engine.IO packet type {:?}", *c as char)
                }
                DecodeError::BadBase64 => write!(f, "binary packet is not valid base64"),
                DecodeError::NotUtf8 => write!(f, "text packet is not valid UTF-8"),
                DecodeError::TooManyPackets(n) => write!(f, "more than {n} packets in one payload"),
            }
        }
    }

    /// Decodes one text packet (a WebSocket text frame, or one record of an HTTP payload).
    pub fn decode(text: &str) -> Result<Packet, DecodeError> {
        let first = *text.as_bytes().first().ok_or(DecodeError::Empty)?;
        let data = || text[1..].to_string();
        Ok(match first {
            b'0' => Packet::Open(data()),
            b'1' => Packet::Close,
            b'2' => Packet::Ping(data()),
            b'3' => Packet::Pong(data()),
            b'4' => Packet::Message(data()),
            b'5' => Packet::Upgrade,
            b'6' => Packet::Noop,
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    /// Decodes an HTTP payload: packets joined by `\x1e`, binary ones as `b<base64>`.
    pub fn decode_payload(body: &[u8], max_packets: usize) -> Result<Vec<Packet>, DecodeError> {
        let mut packets = Vec::new();
        for record in body.split(|b| *b == SEPARATOR) {
            if packets.len() == max_packets {
                return Err(DecodeError::TooManyPackets(max_packets));
            }
            packets.push(match record.first() {
                Some(b'b') => Packet::Binary(base64_decode(&record[1..])?),
                _ => decode(std::str::from_utf8(record).map_err(|_| DecodeError::NotUtf8)?)?,
            });
        }
        Ok(packets)
    }

    /// Room left in front of every `Out` for the largest WebSocket frame header.
    const HEAD_ROOM: usize = 10;

    /// An outbound Engine.IO packet, encoded once and shared by every receiver: the bytes are a
    /// complete server WebSocket frame whose payload (the Engine.IO packet) sits at a fixed
    /// offset, so WebSocket receivers send `ws_frame()` and polling/SSE use `payload()`.
    #[derive(Debug)]
    pub struct Out {
        /// A Vec, not a boxed slice: shrinking to fit would be a realloc per packet.
        bytes: Vec<u8>,
        start: u8,
        binary: bool,
    }

    impl Out {
        /// Builds a text packet; `write` appends the packet (type digit first) to the buffer.
        pub fn text_with(write: impl FnOnce(&mut Vec<u8>)) -> Arc<Out> {
            // Room for a typical packet up front: growing from empty took four reallocs, and
            // the deepest of them set the stack depth of every connection thread (measured).
            let mut buf = Vec::with_capacity(256);
            buf.resize(HEAD_ROOM, 0);
            write(&mut buf);
            Out::seal(buf, false)
        }
        pub fn text(packet: &str) -> Arc<Out> {
            Out::text_with(|b| b.extend_from_slice(packet.as_bytes()))
        }
        pub fn binary(data: &[u8]) -> Arc<Out> {
            let mut buf = Vec::with_capacity(HEAD_ROOM + data.len());
            buf.resize(HEAD_ROOM, 0);
            buf.extend_from_slice(data);
            Out::seal(buf, true)
        }
        fn seal(mut buf: Vec<u8>, binary: bool) -> Arc<Out> {
            let len = buf.len() - HEAD_ROOM;
            let mut head = [0u8; HEAD_ROOM];
            head[0] = 0x80 | if binary { 0x2 } else { 0x1 }; // FIN + opcode
            let n = if len < 126 {
                head[1] = len as u8;
                2
            } else if len <= u16::MAX as usize {
                head[1] = 126;
                head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            } else {
                head[1] = 127;
                head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            };
            let start = HEAD_ROOM - n;
            buf[start..HEAD_ROOM].copy_from_slice(&head[..n]);
            Arc::new(Out {
                bytes: buf,
                start: start as u8,
                binary,
            })
        }
        /// The Engine.IO packet: text with its type digit, or raw binary.
        pub fn payload(&self) -> &[u8] {
            &self.bytes[HEAD_ROOM..]
        }
        pub fn ws_frame(&self) -> &[u8] {
            &self.bytes[self.start as usize..]
        }
        pub fn is_noop(&self) -> bool {
            !self.binary && self.payload() == b"6"
        }
        /// The packet as one record of an HTTP payload (polling body, SSE data).
        pub fn write_record(&self, out: &mut Vec<u8>) {
            if self.binary {
                out.push(b'b');
                base64_encode(self.payload(), out);
            } else {
                out.extend_from_slice(self.payload());
            }
        }
    }

    /// Joins packets into a polling response body.
    pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Arc<Out>>) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in packets.into_iter().enumerate() {
            if i > 0 {
                out.push(SEPARATOR);
            }
            p.write_record(&mut out);
        }
        out
    }

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn base64_encode(data: &[u8], out: &mut Vec<u8>) {
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
    }

    pub fn base64_decode(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let text = match text {
            [rest @ .., b'=', b'='] => rest,
            [rest @ .., b'='] => rest,
            all => all,
        };
        if text.len() % 4 == 1 {
            return Err(DecodeError::BadBase64);
        }
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        for chunk in text.chunks(4) {
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a' + 26,
                    b'0'..=b'9' => c - b'0' + 52,
                    b'+' => 62,
                    b'/' => 63,
                    _ => return Err(DecodeError::BadBase64),
                };
                n |= (v as u32) << (18 - 6 * i);
            }
            let bytes = n.to_be_bytes();
            out.extend_from_slice(&bytes[1..chunk.len()]);
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn decodes_every_packet_type_of_the_spec() {
            for (text, packet) in [
                ("0{\"sid\":\"x\"}", Packet::Open("{\"sid\":\"x\"}".into())),
                ("1", Packet::Close),
                ("2", Packet::Ping("".into())),
                ("2probe", Packet::Ping("probe".into())),
                ("3probe", Packet::Pong("probe".into())),
                ("4hello", Packet::Message("hello".into())),
                ("4", Packet::Message("".into())),
                ("5", Packet::Upgrade),
                ("6", Packet::Noop),
            ] {
                assert_eq!(decode(text), Ok(packet), "{text}");
            }
            assert_eq!(decode(""), Err(DecodeError::Empty));
            assert_eq!(decode("7"), Err(DecodeError::UnknownType(b'7')));
            assert_eq!(decode("x"), Err(DecodeError::UnknownType(b'x')));
        }

        #[test]
        fn decodes_the_spec_payload_example() {
            // engine.io-protocol v4: "4hello\x1e4€\x1ebAQIDBA=="
            let body = "4hello\x1e4€\x1ebAQIDBA==".as_bytes();
            assert_eq!(
                decode_payload(body, 10).unwrap(),
                vec![
                    Packet::Message("hello".into()),
                    Packet::Message("€".into()),
                    Packet::Binary(vec![1, 2, 3, 4]),
                ]
            );
            assert_eq!(decode_payload(body, 2), Err(DecodeError::TooManyPackets(2)));
            assert_eq!(decode_payload(b"b!!!!", 2), Err(DecodeError::BadBase64));
            assert_eq!(decode_payload(b"4\xff", 2), Err(DecodeError::NotUtf8));
            assert_eq!(decode_payload(b"", 2), Err(DecodeError::Empty));
        }

        #[test]
        fn encodes_payloads_as_the_spec_does() {
            let packets = [
                Out::text("4hello"),
                Out::text("4€"),
                Out::binary(&[1, 2, 3, 4]),
            ];
            assert_eq!(
                encode_payload(&packets),
                "4hello\x1e4€\x1ebAQIDBA==".as_bytes()
            );
        }

        #[test]
        fn out_is_a_complete_websocket_frame() {
            let small = Out::text("4hi");
            assert_eq!(small.ws_frame(), b"\x81\x034hi");
            let mid = Out::binary(&[7u8; 300]);
            assert_eq!(&mid.ws_frame()[..4], &[0x82, 126, 1, 44]);
            assert_eq!(mid.payload().len(), 300);
            let big = Out::binary(&vec![1u8; 70_000]);
            assert_eq!(&big.ws_frame()[..2], &[0x82, 127]);
            assert_eq!(big.ws_frame().len(), 70_010);
        }

        /// Property: base64 round-trips every length, and decoding junk never panics.
        #[test]
        fn base64_round_trips_and_never_panics() {
            let mut rng = crate::testutil::Rng(7);
            for len in 0..300 {
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let mut text = Vec::new();
                base64_encode(&data, &mut text);
                assert_eq!(base64_decode(&text).unwrap(), data);
                let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let _ = base64_decode(&junk);
                let _ = decode_payload(&junk, 8);
            }
        }
    }
}

// ───────────────────────────────────────────────────────────────────────────────────────────
mod sio {
    //! Socket.IO v5 codec: `<type>[<n>-][<nsp>,][<id>][<json>]`, strictly checked. Pure: never
    //! touches a socket or a session.
    use serde_json::Value;
    use std::borrow::Cow;
    use std::fmt;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Connect = 0,
        Disconnect = 1,
        Event = 2,
        Ack = 3,
        ConnectError = 4,
        BinaryEvent = 5,
        BinaryAck = 6,
    }

    impl Kind {
        fn from_digit(c: u8) -> Option<Kind> {
            use Kind::*;
            Some(
                [
                    Connect,
                    Disconnect,
                    Event,
                    Ack,
                    ConnectError,
                    BinaryEvent,
                    BinaryAck,
                ][match c {
                    b'0'..=b'6' => (c - b'0') as usize,
                    _ => return None,
                }],
            )
        }
        pub fn digit(self) -> u8 {
            b'0' + self as u8
        }
        pub fn is_binary(self) -> bool {
            matches!(self, Kind::BinaryEvent | Kind::BinaryAck)
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    pub struct Packet {
        pub kind: Kind,
        pub nsp: String,
        pub id: Option<u64>,
        pub data: Option<Value>,
        pub attachments: usize,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum DecodeError {
        UnknownType,
        BadAttachmentCount,
        TooManyAttachments(usize),
        BadNamespace,
        BadAckId,
        BadJson(String),
        BadPayload(&'static str),
        PlaceholderMismatch,
        TooDeep(usize),
    }

    impl fmt::Display for DecodeError {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            use DecodeError::*;
            match self {
                UnknownType => write!(f, "unknown Socket.IO packet type"),
                BadAttachmentCount => write!(f, "binary packet without a valid '<n>-' count"),
                TooManyAttachments(n) => write!(f, "more than {n} attachments"),
                BadNamespace => write!(f, "namespace must start with '/'"),
                BadAckId => write!(f, "ack id is not a decimal integer"),
                BadJson(e) => write!(f, "invalid JSON: {e}"),
                BadPayload(what) => write!(f, "bad payload: {what}"),
                PlaceholderMismatch => {
                    write!(
                        f,
                        "attachment placeholders do not match the attachment count"
                    )
                }
                TooDeep(n) => write!(f, "JSON nested deeper than {n} levels"),
            }
        }
    }

    /// Limits a decoder applies; both bound work an attacker could otherwise ask for.
    #[derive(Debug, Clone, Copy)]
    pub struct Limits {
        pub attachments: usize,
        /// Nesting of arrays and objects: the parser, the placeholder check, the encoder and
        /// `Drop` all recurse, on connection threads with small stacks.
        pub depth: usize,
    }

    /// How deep arrays and objects nest, by a scan that skips strings; stops past `max`.
    fn json_depth(json: &[u8], max: usize) -> usize {
        let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
        for &c in json {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                    if deepest > max {
                        break;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    /// `json` with each lone UTF-16 surrogate escape replaced by `\ufffd`: JavaScript's
    /// `JSON.stringify` writes one for a string cut inside an emoji (`"ab😀".slice(0, 3)` is
    /// `"ab\ud83d"`). The JSON is valid, but a Rust string cannot hold the half, so serde_json
    /// refuses it; U+FFFD is what a UTF-8 encoder (a browser's too) makes of it. Pairs stay.
    /// Run only on text serde_json refused, so a valid packet never pays for it.
    fn lone_surrogates_replaced(json: &str) -> Cow<'_, str> {
        let b = json.as_bytes();
        // The surrogate a `\uXXXX` escape at `at` stands for, if it stands for one.
        let surrogate_at = |at: usize| -> Option<u16> {
            let hex = b.get(at..at + 6).filter(|e| e.starts_with(b"\\u"))?;
            let hex = std::str::from_utf8(&hex[2..]).ok()?;
            let unit = u16::from_str_radix(hex, 16).ok()?;
            (0xD800..=0xDFFF).contains(&unit).then_some(unit)
        };
        let (mut out, mut copied, mut i) = (String::new(), 0, 0);
        while i < b.len() {
            if b[i] != b'\\' {
                i += 1;
                continue;
            }
            match surrogate_at(i) {
                Some(0xD800..=0xDBFF) if matches!(surrogate_at(i + 6), Some(0xDC00..=0xDFFF)) => {
                    i += 12
                }
                Some(_) => {
                    out.push_str(&json[copied..i]);
                    out.push_str("\\ufffd");
                    i += 6;
                    copied = i;
                }
                None => i += 2, // another escape: its character is not a backslash
            }
        }
        if copied == 0 {
            return Cow::Borrowed(json);
        }
        out.push_str(&json[copied..]);
        Cow::Owned(out)
    }

    pub fn decode(text: &str, limits: Limits) -> Result<Packet, DecodeError> {
        let max_attachments = limits.attachments;
        let bytes = text.as_bytes();
        let kind = bytes
            .first()
            .and_then(|c| Kind::from_digit(*c))
            .ok_or(DecodeError::UnknownType)?;
        let mut i = 1;
        let mut attachments = 0;
        if kind.is_binary() {
            let digits = bytes[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || bytes.get(i + digits) != Some(&b'-') {
                return Err(DecodeError::BadAttachmentCount);
            }
            attachments = text[i..i + digits]
                .parse()
                .map_err(|_| DecodeError::BadAttachmentCount)?;
            if attachments > max_attachments {
                return Err(DecodeError::TooManyAttachments(max_attachments));
            }
            i += digits + 1;
        }
        let mut nsp = "/".to_string();
        if bytes.get(i) == Some(&b'/') {
            let end = text[i..].find(',').map_or(text.len(), |n| i + n);
            nsp = text[i..end].to_string();
            i = (end + 1).min(text.len());
        } else if i < bytes.len() && !matches!(bytes[i], b'0'..=b'9' | b'[' | b'{' | b'"') {
            return Err(DecodeError::BadNamespace);
        }
        let digits = bytes[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        let id = match digits {
            0 => None,
            _ => Some(
                text[i..i + digits]
                    .parse::<u64>()
                    .map_err(|_| DecodeError::BadAckId)?,
            ),
        };
        i += digits;
        // No deeper than it has brackets: a count (vectorised) spares most packets the scan.
        let brackets = bytes[i..]
            .iter()
            .filter(|c| matches!(c, b'[' | b'{'))
            .count();
        if brackets > limits.depth && json_depth(&bytes[i..], limits.depth) > limits.depth {
            return Err(DecodeError::TooDeep(limits.depth));
        }
        let data = match &text[i..] {
            "" => None,
            json => Some(
                serde_json::from_str::<Value>(json)
                    .or_else(|e| match lone_surrogates_replaced(json) {
                        // Only text serde_json refused is searched for surrogates to mend.
                        Cow::Owned(mended) => serde_json::from_str(&mended),
                        Cow::Borrowed(_) => Err(e),
                    })
                    .map_err(|e| DecodeError::BadJson(e.to_string()))?,
            ),
        };
        let packet = Packet {
            kind,
            nsp,
            id,
            data,
            attachments,
        };
        check(&packet)?;
        Ok(packet)
    }

    /// The shape rules of PROTOCOL.md §2, per packet type.
    fn check(p: &Packet) -> Result<(), DecodeError> {
        use DecodeError::BadPayload;
        let no_id = || match p.id {
            Some(_) => Err(DecodeError::BadAckId),
            None => Ok(()),
        };
        match p.kind {
            Kind::Connect => {
                no_id()?;
                match &p.data {
                    None | Some(Value::Object(_)) => {}
                    _ => return Err(BadPayload("CONNECT data must be an object")),
                }
            }
            Kind::Disconnect => {
                no_id()?;
                if p.data.is_some() {
                    return Err(BadPayload("DISCONNECT carries no data"));
                }
            }
            Kind::ConnectError => {
                no_id()?;
                match &p.data {
                    Some(Value::Object(_)) | Some(Value::String(_)) => {}
                    _ => return Err(BadPayload("CONNECT_ERROR data must be an object")),
                }
            }
            Kind::Event | Kind::BinaryEvent => match &p.data {
                Some(Value::Array(a)) if a.first().is_some_and(Value::is_string) => {}
                _ => {
                    return Err(BadPayload(
                        "EVENT data must be an array starting with a name",
                    ))
                }
            },
            Kind::Ack | Kind::BinaryAck => {
                if p.id.is_none() {
                    return Err(DecodeError::BadAckId);
                }
                if !matches!(p.data, Some(Value::Array(_))) {
                    return Err(BadPayload("ACK data must be an array"));
                }
            }
        }
        if p.kind.is_binary() {
            let mut seen = vec![false; p.attachments];
            if let Some(data) = &p.data {
                mark_placeholders(data, &mut seen)?;
            }
            if seen.iter().any(|s| !s) {
                return Err(DecodeError::PlaceholderMismatch);
            }
        }
        Ok(())
    }

    /// Every placeholder must name an attachment, and each attachment exactly once.
    fn mark_placeholders(v: &Value, seen: &mut [bool]) -> Result<(), DecodeError> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| mark_placeholders(i, seen)),
            Value::Object(map) => match placeholder_num(v) {
                Some(n) => match seen.get_mut(n) {
                    Some(slot) if !*slot => {
                        *slot = true;
                        Ok(())
                    }
                    _ => Err(DecodeError::PlaceholderMismatch),
                },
                None => map.values().try_for_each(|i| mark_placeholders(i, seen)),
            },
            _ => Ok(()),
        }
    }

    /// `{"_placeholder":true,"num":n}` → `Some(n)`.
    pub fn placeholder_num(v: &Value) -> Option<usize> {
        let map = v.as_object()?;
        if map.len() == 2 && map.get("_placeholder") == Some(&Value::Bool(true)) {
            return map.get("num")?.as_u64().map(|n| n as usize);
        }
        None
    }

    #[cfg(test)]
    pub fn placeholder(num: usize) -> Value {
        serde_json::json!({"_placeholder": true, "num": num})
    }

    /// Writes `<type>[<n>-][<nsp>,][<id>]`; the JSON follows.
    pub fn write_head(
        out: &mut Vec<u8>,
        kind: Kind,
        attachments: usize,
        nsp: &str,
        id: Option<u64>,
    ) {
        out.push(kind.digit());
        if kind.is_binary() {
            crate::push_decimal(out, attachments as u64);
            out.push(b'-');
        }
        if nsp != "/" {
            out.extend_from_slice(nsp.as_bytes());
            out.push(b',');
        }
        if let Some(id) = id {
            crate::push_decimal(out, id);
        }
    }

    /// The inverse of `decode` (the hub writes its packets with `write_head` directly).
    #[allow(dead_code)] // used by the tests and the fuzz target
    pub fn encode(p: &Packet, out: &mut Vec<u8>) {
        write_head(out, p.kind, p.attachments, &p.nsp, p.id);
        if let Some(data) = &p.data {
            // Writing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, data);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        const LIMITS: Limits = Limits {
            attachments: 10,
            depth: 8,
        };

        fn packet(kind: Kind, nsp: &str, id: Option<u64>, data: Option<Value>, n: usize) -> Packet {
            Packet {
                kind,
                nsp: nsp.into(),
                id,
                data,
                attachments: n,
            }
        }

        /// The examples of the socket.io-protocol v5 page, both ways.
        #[test]
        fn spec_examples_decode_and_encode_back() {
            use Kind::*;
            let ph = json!({"_placeholder": true, "num": 0});
            for (text, p) in [
                ("0", packet(Connect, "/", None, None, 0)),
                (
                    "0/admin,{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}",
                    packet(
                        Connect,
                        "/admin",
                        None,
                        Some(json!({"sid":"oSO0OpakMV_3jnilAAAA"})),
                        0,
                    ),
                ),
                (
                    "0{\"token\":\"123\"}",
                    packet(Connect, "/", None, Some(json!({"token":"123"})), 0),
                ),
                ("1/admin,", packet(Disconnect, "/admin", None, None, 0)),
                (
                    "2[\"foo\"]",
                    packet(Event, "/", None, Some(json!(["foo"])), 0),
                ),
                (
                    "2/admin,[\"bar\"]",
                    packet(Event, "/admin", None, Some(json!(["bar"])), 0),
                ),
                (
                    "212[\"foo\"]",
                    packet(Event, "/", Some(12), Some(json!(["foo"])), 0),
                ),
                (
                    "3/admin,13[\"bar\"]",
                    packet(Ack, "/admin", Some(13), Some(json!(["bar"])), 0),
                ),
                (
                    "4{\"message\":\"Not authorized\"}",
                    packet(
                        ConnectError,
                        "/",
                        None,
                        Some(json!({"message":"Not authorized"})),
                        0,
                    ),
                ),
                (
                    "51-[\"baz\",{\"_placeholder\":true,\"num\":0}]",
                    packet(BinaryEvent, "/", None, Some(json!(["baz", ph])), 1),
                ),
                (
                    "61-/admin,15[{\"_placeholder\":true,\"num\":0}]",
                    packet(BinaryAck, "/admin", Some(15), Some(json!([ph])), 1),
                ),
                ("30[]", packet(Ack, "/", Some(0), Some(json!([])), 0)),
                (
                    "318446744073709551615[1]",
                    packet(Ack, "/", Some(u64::MAX), Some(json!([1])), 0),
                ),
            ] {
                assert_eq!(decode(text, LIMITS).as_ref(), Ok(&p), "{text}");
                let mut out = Vec::new();
                encode(&p, &mut out);
                let expected = if text == "1/admin," { "1/admin," } else { text };
                assert_eq!(String::from_utf8(out).unwrap(), expected);
            }
        }

        #[test]
        fn malformed_packets_are_refused_with_a_reason() {
            use DecodeError::*;
            for (text, err) in [
                ("", UnknownType),
                ("7", UnknownType),
                ("2", BadPayload("EVENT data must be an array starting with a name")),
                ("2{\"a\":1}", BadPayload("EVENT data must be an array starting with a name")),
                ("2[]", BadPayload("EVENT data must be an array starting with a name")),
                ("2[1]", BadPayload("EVENT data must be an array starting with a name")),
                ("2[\"a\"", BadJson(String::new())),
                ("3[\"a\"]", BadAckId),
                ("399999999999999999999[1]", BadAckId),
                ("01[]", BadAckId),
                ("0[]", BadPayload("CONNECT data must be an object")),
                ("1/a,{}", BadPayload("DISCONNECT carries no data")),
                ("5[\"a\"]", BadAttachmentCount),
                ("5x-[\"a\"]", BadAttachmentCount),
                ("51-[\"a\"]", PlaceholderMismatch),
                ("51-[\"a\",{\"_placeholder\":true,\"num\":1}]", PlaceholderMismatch),
                ("52-[\"a\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":0}]", PlaceholderMismatch),
                ("599-[\"a\"]", TooManyAttachments(10)),
                ("2admin,[\"a\"]", BadNamespace),
                ("2[\"a\",[[[[[[[[1]]]]]]]]]", TooDeep(8)),
                ("2[\"a\",{\"b\":[{\"c\":[{\"d\":[{\"e\":[1]}]}]}]}]", TooDeep(8)),
            ] {
                let got = decode(text, LIMITS).unwrap_err();
                match (&got, &err) {
                    (BadJson(_), BadJson(_)) => {}
                    _ => assert_eq!(got, err, "{text}"),
                }
                assert!(!got.to_string().is_empty());
            }
        }

        /// Found by `cargo fuzz` (sio_packet): without serde_json's `float_roundtrip` a number
        /// came back from an echo as a different number.
        #[test]
        fn numbers_survive_decode_then_encode() {
            for text in [
                "31[47700000000000000199912983]",
                "2[\"n\",0.1,1e-7,-2.5e300,5e-324]",
            ] {
                let p = decode(text, LIMITS).unwrap();
                let mut out = Vec::new();
                encode(&p, &mut out);
                assert_eq!(decode(std::str::from_utf8(&out).unwrap(), LIMITS), Ok(p));
            }
        }

        /// A JavaScript string cut inside an emoji arrives as a lone surrogate escape.
        #[test]
        fn lone_surrogates_become_replacement_characters_and_pairs_stay() {
            let text = |packet: &str| {
                let p = decode(packet, LIMITS).unwrap();
                p.data.unwrap()[1].as_str().unwrap().to_string()
            };
            assert_eq!(text(r#"2["m","ab\ud83d"]"#), "ab\u{fffd}");
            assert_eq!(
                text(r#"2["m","\uDE00x\ud83d\ud83d\ude00"]"#),
                "\u{fffd}x\u{fffd}😀"
            );
            assert_eq!(text(r#"2["m","\ud83d\n"]"#), "\u{fffd}\n");
            assert_eq!(text(r#"2["m","\ud83d\ude00"]"#), "😀");
            // An escaped backslash before `ud83d` is text, not an escape.
            assert_eq!(text(r#"2["m","\\ud83d"]"#), "\\ud83d");
            assert!(matches!(
                lone_surrogates_replaced(r#"["m","\\ud83d\"\u00e9"]"#),
                Cow::Borrowed(_)
            ));
            // Broken escapes are still refused, by the parser.
            assert!(decode(r#"2["m","\ud8"]"#, LIMITS).is_err());
            assert!(decode(r#"2["m","\ud83"#, LIMITS).is_err());
        }

        #[test]
        fn depth_scan_skips_strings_and_counts_both_brackets() {
            assert_eq!(json_depth(br#"["a",[1],{"b":[2]}]"#, 10), 3);
            assert_eq!(json_depth(br#"["[[[[","\"[[[",{"}}}":"{{{"}]"#, 10), 2);
            assert_eq!(
                json_depth(b"[[[[[[[[[[[[", 4),
                5,
                "stops counting past the limit"
            );
            assert_eq!(json_depth(b"", 4), 0);
            // Exactly at the limit is accepted.
            assert!(decode("2[\"a\",[[[[[[1]]]]]]]", LIMITS).is_ok());
            // More brackets than the limit, but inside a string: the scan decides, not the count.
            assert!(decode("2[\"a\",\"[[[[[[[[[[{{{{\"]", LIMITS).is_ok());
        }

        /// Property: any packet we encode decodes to itself; no input panics the decoder.
        #[test]
        fn encode_then_decode_is_identity_and_junk_never_panics() {
            let mut rng = crate::testutil::Rng(11);
            let names = ["/", "/movies", "/a,b"];
            for round in 0..2000 {
                let kind = [Kind::Event, Kind::Ack, Kind::BinaryEvent, Kind::BinaryAck][round % 4];
                let n = if kind.is_binary() {
                    1 + rng.next() as usize % 3
                } else {
                    0
                };
                let mut items = vec![json!(format!("ev{}", rng.next() % 100))];
                for num in 0..n {
                    items.push(json!({"k": placeholder(num), "x": rng.next() % 1000}));
                }
                items.push(json!({"s": "é\"\\\n", "f": 1.5, "n": null, "b": [true, false]}));
                let id =
                    matches!(kind, Kind::Ack | Kind::BinaryAck).then(|| rng.next() % 1_000_000);
                let nsp = names[rng.next() as usize % 2];
                let p = packet(
                    kind,
                    nsp,
                    id.or((round % 3 == 0).then_some(5)),
                    Some(Value::Array(items)),
                    n,
                );
                let mut out = Vec::new();
                encode(&p, &mut out);
                let text = String::from_utf8(out).unwrap();
                assert_eq!(decode(&text, LIMITS), Ok(p), "{text}");
                // Mutations of a valid packet: truncations and byte flips never panic.
                let cut = rng.next() as usize % (text.len() + 1);
                if let Some(prefix) = text.get(..cut) {
                    let _ = decode(prefix, LIMITS);
                }
                let mut bytes = text.into_bytes();
                let at = rng.next() as usize % bytes.len();
                bytes[at] = rng.next() as u8;
                if let Ok(s) = std::str::from_utf8(&bytes) {
                    let _ = decode(s, LIMITS);
                }
            }
        }
    }
}

// ───────────────────────────────────────────────────────────────────────────────────────────
mod http {
    //! The HTTP/1.1 front on `std::net`: request heads parsed by `httparse` (pure, fuzzable),
    //! bodies by Content-Length, responses written head and body in one write, query strings,
    //! CORS. Knows nothing of Engine.IO.
    use std::borrow::Cow;
    use std::io::{self, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    #[derive(Debug, Clone)]
    pub struct Limits {
        pub max_head: usize,
        pub max_line: usize,
        pub max_body: usize,
        pub header_timeout: Duration,
        pub idle_timeout: Duration,
    }

    #[derive(Debug, Default, Clone)]
    pub struct Request {
        /// The head's text in one allocation (a string each was ten allocations a request):
        /// the method, the path, the query, then each header's name, lower-cased, and value,
        /// lossily decoded (invalid UTF-8 becomes U+FFFD). The spans below index it.
        text: String,
        method: Span,
        path: Span,
        query: Span,
        headers: Vec<(Span, Span)>,
        pub body: Vec<u8>,
        pub keep_alive: bool,
        pub content_length: usize,
        /// The body was over the limit and was not read: answer 413 and close.
        pub oversize: bool,
        /// HTTP/1.1 `Expect: 100-continue`: the client waits for a `100 Continue` before it
        /// sends its body.
        pub expect_continue: bool,
    }

    type Span = std::ops::Range<usize>;

    impl Request {
        /// A request with no headers and no body.
        #[cfg(test)]
        pub fn new(method: &str, path: &str, query: &str) -> Request {
            let mut r = Request::default();
            r.method = r.push(method);
            r.path = r.push(path);
            r.query = r.push(query);
            r
        }
        fn push(&mut self, part: &str) -> Span {
            let start = self.text.len();
            self.text.push_str(part);
            start..self.text.len()
        }
        pub fn method(&self) -> &str {
            &self.text[self.method.clone()]
        }
        pub fn path(&self) -> &str {
            &self.text[self.path.clone()]
        }
        pub fn query(&self) -> &str {
            &self.text[self.query.clone()]
        }
        /// (name, value) pairs in the order sent.
        pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
            let text = |span: &Span| &self.text[span.clone()];
            self.headers.iter().map(move |(n, v)| (text(n), text(v)))
        }
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers().find(|&(n, _)| n == name).map(|(_, v)| v)
        }
        /// True when a comma-separated header holds `token` (case-insensitive).
        pub fn header_has(&self, name: &str, token: &str) -> bool {
            self.headers()
                .filter(|&(n, _)| n == name)
                .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        }
        /// Several query parameters in one pass (`query_params`).
        pub fn params<const N: usize>(&self, names: [&str; N]) -> [Option<Cow<'_, str>>; N] {
            query_params(self.query(), names)
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum HttpError {
        /// The peer closed or went idle between requests: close without a word.
        Closed,
        /// Answer with this status and message, then close.
        Status(u16, &'static str),
    }

    /// Parses a request head. `Ok(None)`: incomplete, read more. Pure.
    pub fn parse_head(buf: &[u8], lim: &Limits) -> Result<Option<(Request, usize)>, HttpError> {
        let line_end = buf.iter().position(|&b| b == b'\n');
        if line_end.unwrap_or(buf.len()) > lim.max_line {
            return Err(HttpError::Status(414, "request line too long"));
        }
        // Room for 16 on the stack (512 bytes: no deeper stack page at 1k connections),
        // for 48 on the heap only if the head has more. 1.5 KiB on the stack would deepen
        // every connection thread's stack by a page; 512 bytes on the heap would stay in
        // every thread's malloc cache (+0.5 KiB per connection at rest, measured).
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let mut parsed = req.parse(buf);
        let mut more;
        if let Err(httparse::Error::TooManyHeaders) = parsed {
            more = vec![httparse::EMPTY_HEADER; 48];
            req = httparse::Request::new(&mut more);
            parsed = req.parse(buf);
        }
        let n = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > lim.max_head => {
                return Err(HttpError::Status(431, "request header fields too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::Status(431, "too many header fields"))
            }
            Err(_) => return Err(HttpError::Status(400, "malformed HTTP request")),
        };
        if n > lim.max_head {
            return Err(HttpError::Status(431, "request header fields too large"));
        }
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut r = Request {
            text: String::with_capacity(n),
            headers: Vec::with_capacity(req.headers.len()),
            ..Default::default()
        };
        r.method = r.push(req.method.unwrap_or(""));
        r.path = r.push(path);
        r.query = r.push(query);
        for h in req.headers.iter() {
            let name = r.push(h.name);
            r.text[name.clone()].make_ascii_lowercase();
            let value = match std::str::from_utf8(h.value) {
                Ok(text) => r.push(text),
                Err(_) => r.push(&String::from_utf8_lossy(h.value)),
            };
            r.headers.push((name, value));
        }
        let http10 = req.version == Some(0);
        r.keep_alive = if http10 {
            r.header_has("connection", "keep-alive")
        } else {
            !r.header_has("connection", "close")
        };
        r.expect_continue = !http10 && r.header_has("expect", "100-continue");
        if r.header("transfer-encoding").is_some() {
            return Err(HttpError::Status(
                501,
                "chunked request bodies are not supported; send Content-Length",
            ));
        }
        if let Some(cl) = r.header("content-length") {
            r.content_length = cl
                .trim()
                .parse()
                .map_err(|_| HttpError::Status(400, "bad Content-Length"))?;
        }
        Ok(Some((r, n)))
    }

    /// The read timeout set on a connection's socket, remembered so that it is set only when
    /// it changes: a keep-alive connection arms its idle timeout once, not once per request,
    /// and a connection whose first request was already there never arms one at all.
    #[derive(Default)]
    pub struct ReadTimeout(Option<Duration>);

    impl ReadTimeout {
        pub fn set(&mut self, stream: &TcpStream, timeout: Option<Duration>) {
            if self.0 != timeout {
                let _ = stream.set_read_timeout(timeout);
                self.0 = timeout;
            }
        }
    }

    /// Reads one request (head and body) from the connection. Bytes after it stay in `buf`
    /// (a pipelined request, or the first WebSocket frames after an upgrade request).
    pub fn read_request(
        stream: &TcpStream,
        buf: &mut Vec<u8>,
        lim: &Limits,
        armed: &mut ReadTimeout,
    ) -> Result<Request, HttpError> {
        let mut started: Option<Instant> = (!buf.is_empty()).then(Instant::now);
        let (mut req, head_len) = loop {
            if !buf.is_empty() {
                if let Some(found) = parse_head(buf, lim)? {
                    break found;
                }
            }
            // EIO: an idle keep-alive connection gets idle_timeout; a started head must be
            // whole within header_timeout (slowloris).
            let timeout = match started {
                None => lim.idle_timeout,
                Some(t) => lim
                    .header_timeout
                    .checked_sub(t.elapsed())
                    .ok_or(HttpError::Status(408, "request head timed out"))?,
            };
            // A new client sends its request as it connects, so on a socket with no timeout
            // armed the bytes are usually there already: take them without waiting, and arm
            // the timeout only when the read would block.
            let read = match armed.0 {
                None => read_more(stream, buf, libc::MSG_DONTWAIT),
                Some(_) => Err(io::ErrorKind::WouldBlock.into()),
            };
            let read = match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    armed.set(stream, Some(timeout.max(Duration::from_millis(1))));
                    read_more(stream, buf, 0)
                }
                read => read,
            };
            match read {
                Ok(0) => return Err(HttpError::Closed),
                Ok(_) => {
                    started.get_or_insert_with(Instant::now);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if started.is_some() && is_timeout(&e) => {
                    return Err(HttpError::Status(408, "request head timed out"))
                }
                Err(_) => return Err(HttpError::Closed),
            }
        };
        buf.drain(..head_len);
        if req.content_length > lim.max_body {
            req.oversize = true;
            req.keep_alive = false;
            return Ok(req);
        }
        if req.expect_continue && buf.len() < req.content_length {
            // Otherwise the client waits a while of its own before it sends (curl: 1 s).
            let _ = (&*stream).write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let deadline = Instant::now() + lim.header_timeout;
        while buf.len() < req.content_length {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or(HttpError::Status(408, "request body timed out"))?;
            armed.set(stream, Some(left.max(Duration::from_millis(1))));
            match read_more(stream, buf, 0) {
                Ok(0) => return Err(HttpError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    return Err(HttpError::Status(408, "request body timed out"))
                }
                Err(_) => return Err(HttpError::Closed),
            }
        }
        req.body = buf.drain(..req.content_length).collect();
        Ok(req)
    }

    /// `recv(2)` with `flags` into the buffer's own spare room: a stack array here would stay
    /// resident for the life of every connection thread (a page each, measured). The room is
    /// not zeroed first: that was a 4 KiB `memset` per request, the largest single cost of a
    /// polling request under callgrind.
    fn read_more(stream: &TcpStream, buf: &mut Vec<u8>, flags: libc::c_int) -> io::Result<usize> {
        buf.reserve(4096);
        let spare = buf.spare_capacity_mut();
        // SAFETY: the spare capacity is valid for writes of its length.
        let n = unsafe { recv_to(stream, spare.as_mut_ptr().cast(), spare.len(), flags) }?;
        // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    /// Polling a socket before blocking on it (`--spin-us`): on a VM, waking an idle vCPU is
    /// most of a lone client's round trip (README, performance). One rule for a WebSocket's
    /// frames and a keep-alive connection's requests: poll only while the connections that
    /// could poll are fewer than CPUs (a polling thread then takes a CPU nobody else wants),
    /// and only when the last message came within twice the budget.
    pub struct Spin {
        budget: Duration,
        /// The last wait was short, so the next one may be too.
        warm: bool,
    }

    impl Spin {
        pub fn new(budget: Duration) -> Spin {
            Spin {
                budget,
                warm: false,
            }
        }

        /// Whether to poll, and time the wait, with `live` such connections: if not, the
        /// thread just blocks (one relaxed load and a return on a busy server).
        pub fn allowed(&self, live: usize) -> bool {
            !self.budget.is_zero() && live < crate::cpus()
        }

        /// How long to poll before blocking now: only after a short wait.
        pub fn budget(&self) -> Option<Duration> {
            self.warm.then_some(self.budget)
        }

        /// After a wait that began at `since` has ended.
        pub fn waited(&mut self, since: Instant) {
            self.warm = since.elapsed() < self.budget * 2;
        }
    }

    /// Reads what is already there without blocking, yielding the CPU between tries, for up
    /// to `budget`; `None` when nothing came.
    pub fn poll_recv(
        tcp: &TcpStream,
        buf: &mut [u8],
        budget: Duration,
    ) -> io::Result<Option<usize>> {
        let until = Instant::now() + budget;
        loop {
            match recv(tcp, buf, libc::MSG_DONTWAIT) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            // SAFETY: no arguments; gives the CPU to whatever else is runnable.
            unsafe { libc::sched_yield() };
        }
    }

    /// Polls (as `poll_recv`) for the next request into the buffer's spare room; whether
    /// anything came (bytes, or the end of the stream).
    pub fn poll_more(stream: &TcpStream, buf: &mut Vec<u8>, budget: Duration) -> io::Result<bool> {
        let len = buf.len();
        buf.resize(len + 4096, 0);
        let n = poll_recv(stream, &mut buf[len..], budget);
        buf.truncate(len + n.as_ref().map_or(0, |n| n.unwrap_or(0)));
        n.map(|n| n.is_some())
    }

    /// `recv(2)` with `flags` (`MSG_DONTWAIT`, `MSG_PEEK`), which `Read` cannot pass.
    pub fn recv(stream: &TcpStream, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        unsafe { recv_to(stream, buf.as_mut_ptr(), buf.len(), flags) }
    }

    /// `recv(2)` into the `len` bytes at `at`.
    ///
    /// # Safety
    /// `at` must be valid for writes of `len` bytes.
    unsafe fn recv_to(
        stream: &TcpStream,
        at: *mut u8,
        len: usize,
        flags: libc::c_int,
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: recv writes at most `len` bytes at `at` (the caller's promise); the fd
        // belongs to the live TcpStream.
        let n = unsafe { libc::recv(stream.as_raw_fd(), at.cast(), len, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn is_timeout(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    }

    pub fn reason(status: u16) -> &'static str {
        match status {
            101 => "Switching Protocols",
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            414 => "URI Too Long",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "Unknown",
        }
    }

    /// The response head; the caller appends the body (or streams it).
    pub fn head(
        status: u16,
        headers: &[(&str, &str)],
        body_len: Option<usize>,
        keep_alive: bool,
    ) -> Vec<u8> {
        // Appended in place: a `format!` per line would leave its freed buffers in the
        // connection thread's malloc cache for the connection's life, and `write!` was most
        // of the cost of a head.
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"HTTP/1.1 ");
        crate::push_decimal(&mut out, status.into());
        out.push(b' ');
        out.extend_from_slice(reason(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
                out.extend_from_slice(part);
            }
        }
        if let Some(len) = body_len {
            out.extend_from_slice(b"Content-Length: ");
            crate::push_decimal(&mut out, len as u64);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n\r\n"
        } else {
            b"Connection: close\r\n\r\n"
        });
        out
    }

    /// Writes head and body in one write (one segment with TCP_NODELAY, no 40 ms stall).
    pub fn respond(
        stream: &TcpStream,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        keep_alive: bool,
    ) -> io::Result<()> {
        let mut out = head(status, headers, Some(body.len()), keep_alive);
        out.extend_from_slice(body);
        (&*stream).write_all(&out)
    }

    /// The values of `names` in one pass over the query (the first of a repeated key wins),
    /// percent-decoded, borrowed where nothing needed decoding.
    pub fn query_params<'q, const N: usize>(
        query: &'q str,
        names: [&str; N],
    ) -> [Option<Cow<'q, str>>; N] {
        let mut found = [const { None }; N];
        // Split by hand: `str::split` runs `memchr`, whose set-up outweighs a short query.
        let split = |s: &'q str, sep: u8| match s.bytes().position(|b| b == sep) {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let mut rest = Some(query);
        while let Some(pairs) = rest {
            let (pair, next) = split(pairs, b'&');
            rest = next;
            let (k, v) = split(pair, b'=');
            let v = v.unwrap_or("");
            let k = percent_decode(k);
            if let Some(i) = names.iter().position(|&n| n == k) {
                if found[i].is_none() {
                    found[i] = Some(percent_decode(v));
                }
            }
        }
        found
    }

    /// Borrows when there is nothing to decode, so matching a query's keys allocates nothing.
    pub fn percent_decode(s: &str) -> Cow<'_, str> {
        let b = s.as_bytes();
        if !b.iter().any(|&c| c == b'%' || c == b'+') {
            return Cow::Borrowed(s);
        }
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                b'+' => out.push(b' '),
                c => out.push(c),
            }
            i += 1;
        }
        Cow::Owned(String::from_utf8_lossy(&out).into_owned())
    }

    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }

    /// True for a value safe to echo into a response header (visible ASCII, no CR/LF).
    pub fn header_safe(v: &str) -> bool {
        !v.is_empty() && v.len() <= 256 && v.bytes().all(|c| (0x21..0x7f).contains(&c) || c == b' ')
    }

    /// CORS: `Err(())` when the Origin is not allowed; otherwise the headers to add. `allowed`
    /// empty means the server's own origin (from Host) and `null` (a page opened from disk).
    pub fn cors(
        origin: Option<&str>,
        host: Option<&str>,
        allowed: &[String],
    ) -> Result<Vec<(&'static str, String)>, ()> {
        let Some(origin) = origin else {
            return Ok(Vec::new());
        };
        let ok = if allowed.iter().any(|a| a == "*") {
            header_safe(origin)
        } else if allowed.is_empty() {
            origin == "null"
                || host.is_some_and(|h| {
                    origin == format!("http://{h}") || origin == format!("https://{h}")
                })
        } else {
            allowed.iter().any(|a| a == origin)
        };
        if !ok || !header_safe(origin) {
            return Err(());
        }
        Ok(vec![
            ("Access-Control-Allow-Origin", origin.to_string()),
            ("Access-Control-Allow-Credentials", "true".into()),
            ("Vary", "Origin".into()),
        ])
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn lim() -> Limits {
            Limits {
                max_head: 1024,
                max_line: 256,
                max_body: 100,
                header_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            }
        }

        #[test]
        fn polling_reads_what_is_there_gives_up_when_nothing_comes_and_sees_the_end() {
            use std::io::Write;
            use std::net::TcpListener;
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let mut buf = [0u8; 16];
            let budget = Duration::from_micros(50);
            assert_eq!(poll_recv(&server, &mut buf, budget).unwrap(), None);
            // A long budget: it returns as soon as the bytes (or the end) are there.
            let patience = Duration::from_secs(10);
            client.write_all(b"42").unwrap();
            assert_eq!(poll_recv(&server, &mut buf, patience).unwrap(), Some(2));
            assert_eq!(&buf[..2], b"42");
            // Into a request buffer: appended after what it holds, nothing added when nothing came.
            let mut pending = b"GET".to_vec();
            assert!(!poll_more(&server, &mut pending, budget).unwrap());
            assert_eq!(pending, b"GET");
            client.write_all(b" / HTTP/1.1").unwrap();
            assert!(poll_more(&server, &mut pending, patience).unwrap());
            assert_eq!(pending, b"GET / HTTP/1.1");
            drop(client);
            assert_eq!(poll_recv(&server, &mut buf, patience).unwrap(), Some(0));
            assert!(
                poll_more(&server, &mut pending, patience).unwrap(),
                "the end counts"
            );
            assert_eq!(pending, b"GET / HTTP/1.1");
        }

        #[test]
        fn parses_heads_and_refuses_what_it_must() {
            let input = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: a\r\nOrigin: null\r\n\r\nrest";
            let (r, n) = parse_head(input, &lim()).unwrap().unwrap();
            assert_eq!((r.method(), r.path()), ("GET", "/socket.io/"));
            let [transport] = r.params(["transport"]);
            assert_eq!(transport.as_deref(), Some("polling"));
            assert_eq!(r.header("origin"), Some("null"));
            assert!(r.keep_alive && !r.expect_continue);
            assert_eq!(&input[n..], b"rest");
            // Names lower-cased, values lossily decoded; past 16 headers the parse takes
            // more room, up to 48.
            let mut many = b"GET / HTTP/1.1\r\nX-Bin: a\xffb\r\n".to_vec();
            for i in 0..40 {
                many.extend_from_slice(format!("H{i}: v{i}\r\n").as_bytes());
            }
            many.extend_from_slice(b"\r\n");
            let (r, _) = parse_head(&many, &lim()).unwrap().unwrap();
            assert_eq!(r.headers().count(), 41);
            assert_eq!(r.header("x-bin"), Some("a\u{fffd}b"));
            assert_eq!(r.header("h39"), Some("v39"));
            assert_eq!(r.query(), "");
            // `Expect: 100-continue` counts in HTTP/1.1 only (RFC 9110, 10.1.1).
            for (version, expects) in [("1.1", true), ("1.0", false)] {
                let head = format!("POST / HTTP/{version}\r\nExpect: 100-Continue\r\n\r\n");
                let (r, _) = parse_head(head.as_bytes(), &lim()).unwrap().unwrap();
                assert_eq!(r.expect_continue, expects, "HTTP/{version}");
            }
            assert!(matches!(
                parse_head(b"GET / HTTP/1.1\r\nHost:", &lim()),
                Ok(None)
            ));
            let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
            for (input, status) in [
                (long_line.into_bytes(), 414),
                (
                    format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000)).into_bytes(),
                    431,
                ),
                (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(), 400),
                (
                    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                    501,
                ),
                (b"\x00\x01\x02\r\n\r\n".to_vec(), 400),
                (
                    (0..60)
                        .map(|i| format!("H{i}: v\r\n"))
                        .fold("GET / HTTP/1.1\r\n".to_string(), |a, b| a + &b)
                        .into_bytes(),
                    431,
                ),
            ] {
                match parse_head(&input, &lim()) {
                    Err(HttpError::Status(s, _)) => assert_eq!(s, status),
                    other => panic!("expected {status}, got {other:?}"),
                }
            }
        }

        #[test]
        fn query_values_are_percent_decoded() {
            let [sid, b, a, none] = query_params("a=1&sid=x%2Fy+z&b&a=2", ["sid", "b", "a", "t"]);
            assert_eq!(sid.as_deref(), Some("x/y z"));
            assert_eq!(b.as_deref(), Some(""));
            assert_eq!(a.as_deref(), Some("1"), "the first of a repeated key wins");
            assert_eq!(none, None);
            let [key] = query_params("s%69d=x", ["sid"]);
            assert_eq!(key.as_deref(), Some("x"), "keys are decoded too");
            assert_eq!(percent_decode("%zz%4"), "%zz%4");
            assert_eq!(percent_decode("%E2%82%AC"), "€");
        }

        #[test]
        fn cors_allows_same_origin_and_null_by_default_and_never_echoes_junk() {
            let none: Vec<String> = vec![];
            assert_eq!(cors(None, Some("h:1"), &none), Ok(vec![]));
            assert!(cors(Some("http://h:1"), Some("h:1"), &none).is_ok());
            assert!(cors(Some("null"), Some("h:1"), &none).is_ok());
            assert!(cors(Some("http://evil"), Some("h:1"), &none).is_err());
            let any = vec!["*".to_string()];
            assert!(cors(Some("http://evil"), None, &any).is_ok());
            assert!(cors(Some("http://e\u{fffd}vil"), None, &any).is_err());
            let listed = vec!["http://a".to_string()];
            assert!(cors(Some("http://a"), None, &listed).is_ok());
            assert!(cors(Some("null"), None, &listed).is_err());
        }

        /// Property: no byte string panics the head parser.
        #[test]
        fn junk_never_panics_the_parser() {
            let mut rng = crate::testutil::Rng(3);
            let seed = b"POST /socket.io/?EIO=4&sid=a HTTP/1.1\r\nContent-Length: 3\r\nOrigin: x\r\n\r\nabc";
            for _ in 0..5000 {
                let mut input = seed.to_vec();
                for _ in 0..(rng.next() % 6) {
                    let at = rng.next() as usize % input.len();
                    input[at] = rng.next() as u8;
                }
                input.truncate(rng.next() as usize % (input.len() + 1));
                let _ = parse_head(&input, &lim());
                let _ = percent_decode(&String::from_utf8_lossy(&input));
            }
        }
    }
}

/// The CPUs this process may use: connection threads poll instead of sleeping only while
/// there are fewer connections than these (`--spin-us`).
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Takes one off a counter when dropped: what it counts (an open connection, a WebSocket
/// being read) stays counted for as long as it lives, however its thread leaves.
struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);
impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Appends `n` in decimal: `write!` would take the formatting machinery for every ack id and
/// every response head.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Locks a mutex, ignoring poisoning: a handler that panicked must not take every other
/// session down with it (the state it guards stays consistent between statements).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the CPU to start loading the cache line at `p`, without waiting for it. A hint: it
/// never faults and reads nothing the program can see, so any address will do.
#[inline]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads no memory the program observes and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Runs `f` on a new detached thread with a `stack`-byte stack (plus a guard page), straight
/// through `pthread_create`. `std::thread` would also map, protect, install and at exit unmap
/// a signal stack for every thread (four more syscalls, two more mappings, and TLB shootdowns
/// on unmap), allocate a join packet nobody reads, and add its own frames to the top of the
/// stack; for a thread per connection that showed in the connect rate and in the stack pages
/// each connection keeps resident (measured).
///
/// The guard page is the thread's own doing (`guard_own_stack`), not glibc's: glibc makes it
/// by mapping the stack PROT_NONE and then `mprotect`ing all but the guard, which splits the
/// mapping in two for every thread — a syscall, ~6 µs per thread created here, and two of
/// the 65,530 mappings a process may have per thread. A stack overflow hits the guard page
/// and ends the process with SIGSEGV, as it does under `std::thread`.
fn spawn_detached(stack: usize, f: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
    extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the box leaked below, handed to exactly this one thread.
        let f = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) };
        if let Err(e) = guard_own_stack() {
            log!(
                ERROR,
                "a thread could not guard its stack, so it does not run: {e}"
            );
            return std::ptr::null_mut();
        }
        // The panic hook has already reported it; a panic must not unwind into C.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(*f));
        std::ptr::null_mut()
    }
    let arg = Box::into_raw(Box::new(f));
    // SAFETY: the attribute object is initialised before use and destroyed after; `start`
    // takes ownership of `arg` only when the thread was created, otherwise it is freed here.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        let size = stack.max(libc::PTHREAD_STACK_MIN) + page_size();
        libc::pthread_attr_setstacksize(&mut attr, size);
        libc::pthread_attr_setguardsize(&mut attr, 0);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut thread: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut thread, &attr, start, arg.cast());
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            drop(Box::from_raw(arg));
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Makes the lowest page of the calling thread's stack (the end it grows towards) a guard:
/// with `MADV_GUARD_INSTALL` (Linux 6.13+), a marker in the page table that faults like a
/// PROT_NONE page without splitting the mapping; on older kernels, `mprotect(PROT_NONE)`.
fn guard_own_stack() -> std::io::Result<()> {
    const MADV_GUARD_INSTALL: libc::c_int = 102;
    // SAFETY: the attribute object is filled by pthread_getattr_np before it is read and
    // destroyed after; the page named lies inside this thread's own stack mapping, at the
    // far end from the frames in use (the thread has just started).
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let rc = libc::pthread_getattr_np(libc::pthread_self(), &mut attr);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        let (mut low, mut size) = (std::ptr::null_mut(), 0);
        let rc = libc::pthread_attr_getstack(&attr, &mut low, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        if libc::madvise(low, page_size(), MADV_GUARD_INSTALL) == 0
            || libc::mprotect(low, page_size(), libc::PROT_NONE) == 0
        {
            return Ok(());
        }
    }
    Err(std::io::Error::last_os_error())
}

/// Puts the calling thread under SCHED_BATCH. A connection thread mostly sleeps in `recv` and
/// runs a few microseconds per message; under the default policy each wake-up may preempt the
/// thread that is running, so a busy server spends its time switching between threads that
/// each had one message to handle. Under SCHED_BATCH a woken thread waits until the running
/// one blocks (or its slice ends): ~1.07 context switches per echoed message instead of ~1.43
/// (measured: README, performance). Scheduling priority (nice) is unchanged. The accept and timers
/// threads keep the default policy: a batch accept thread waits behind busy connections.
fn sched_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

/// A long fan-out's way off a CPU it would share with the readers it wakes. The fan-out's
/// first `send`s wake the threads that read its members' sockets; the kernel may place a
/// woken reader on the sender's CPU (a sync wake-up goes to the waker's CPU when the waker
/// runs alone there), and the two then take turns on it for the rest of the fan-out while
/// another CPU idles. A reader placed there shows as an involuntary switch of the sender: it
/// preempted it. `check`, a few `send`s in, moves the thread to the process's other CPUs if
/// one came since `start`; dropping the value gives it back the set it had (without moving
/// it again). When nothing preempted the thread, it costs two `getrusage` calls.
///
/// A thread's first such fan-out also ends `PeerCpu` for it (`FANS_OUT`) and gives it back
/// all the process's CPUs. A broadcast's sender wakes on each of its peer's chats, and on
/// two CPUs `PeerCpu` kept it to the one its peer had not sent from, from which a preempted
/// fan-out could only escape to the peer's: with that, the median delivery to 1000 members
/// took 1.23× as long (README, performance: What moved).
struct SharedCpuEscape {
    switches: i64,
    restore: Option<libc::cpu_set_t>,
}

impl SharedCpuEscape {
    fn start() -> Self {
        if !FANS_OUT.replace(true) {
            if let Some(cpus) = process_cpus() {
                set_cpus(&cpus);
            }
        }
        SharedCpuEscape {
            switches: involuntary_switches(),
            restore: None,
        }
    }

    fn check(&mut self) {
        if self.restore.is_none() && involuntary_switches() > self.switches {
            self.restore = leave_this_cpu();
        }
    }
}

thread_local! {
    /// The calling thread has fanned out to a crowd (`SharedCpuEscape`): `PeerCpu` leaves it be.
    static FANS_OUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Drop for SharedCpuEscape {
    fn drop(&mut self) {
        if let Some(cpus) = &self.restore {
            set_cpus(cpus);
        }
    }
}

/// The calling thread's involuntary context switches so far.
fn involuntary_switches() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage.ru_nivcsw
    }
}

/// Moves the calling thread off the CPU it runs on, to the process's others (the thread's own
/// set may be narrower: `PeerCpu`); returns the set it had, or None where the process may run
/// on one CPU only (or a call failed).
fn leave_this_cpu() -> Option<libc::cpu_set_t> {
    // SAFETY: the set is zeroed before the kernel fills it; pid 0 is the calling thread.
    let had = unsafe {
        let mut had: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of_val(&had), &mut had) == 0).then_some(had)
    }?;
    // SAFETY: no arguments.
    keep_off(unsafe { libc::sched_getcpu() }).then_some(had)
}

/// Lets the calling thread run on the process's CPUs but `cpu` (the kernel moves it at once
/// if it runs there); whether it did.
fn keep_off(cpu: libc::c_int) -> bool {
    let (Some(mut cpus), Ok(cpu)) = (process_cpus(), usize::try_from(cpu)) else {
        return false;
    };
    // SAFETY: `cpu` is below CPU_SETSIZE (a CPU the kernel reported).
    unsafe { libc::CPU_CLR(cpu, &mut cpus) };
    set_cpus(&cpus)
}

/// Lets the calling thread run on `cpus` only; whether the kernel took the set.
fn set_cpus(cpus: &libc::cpu_set_t) -> bool {
    // SAFETY: `cpus` is a whole cpu_set_t of the size passed; pid 0 is the calling thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(cpus), cpus) == 0 }
}

/// The CPUs the process may run on (as started: `taskset` narrows them), or None if that is
/// one CPU, where no thread can move off another's.
fn process_cpus() -> Option<libc::cpu_set_t> {
    static CPUS: std::sync::OnceLock<Option<libc::cpu_set_t>> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        // SAFETY: the set is zeroed before the kernel fills it; pid 0 is the calling thread,
        // main's, which has the process's set (main asks first).
        unsafe {
            let mut cpus: libc::cpu_set_t = std::mem::zeroed();
            let ok = libc::sched_getaffinity(0, std::mem::size_of_val(&cpus), &mut cpus) == 0;
            (ok && libc::CPU_COUNT(&cpus) >= 2).then_some(cpus)
        }
    })
}

/// Keeps a connection thread off the CPU its peer runs on, when the peer is a process on this
/// machine. The peer's `send` wakes the thread with the kernel's sync hint, and a sync
/// wake-up goes to the waker's CPU when the waker runs alone there. A SCHED_BATCH thread put
/// there cannot preempt the peer: it waits until the peer blocks or a tick (4 ms at
/// `CONFIG_HZ=250`) takes the CPU from it, while another CPU may run the thread's siblings
/// (README, performance: this made the echo tails). Over the loopback, the CPU that took the
/// peer's last packet (`SO_INCOMING_CPU`) is the one it sent from; a thread that wakes there
/// leaves that CPU out of its set. It looks again when it wakes on another CPU, after a wait of
/// a millisecond or more (it may have waited behind its peer, which moved to its CPU), and on
/// every 32nd wake; not in its first 8 wakes (a connection's handshake: most connections then
/// sit idle, and a look with a move in each made 10k connects 19 % slower). After a long wait
/// it moves only if its run delay (`schedstat`: time spent runnable, not running) grew by
/// `RUNNABLE_TO_MOVE` since its last such reading, the wait included: a broadcast's
/// sender, woken every 20 ms by a peer that goes back to sleep at once, was otherwise kept to
/// one CPU from its first look on and moved again on many chats, which nearly doubled a
/// 100-member chat's median delivery. A remote peer's packets come in on the CPU of a network
/// card's queue, which a thread has no reason to avoid. A thread that has fanned out to a
/// crowd is left be (`SharedCpuEscape`). Costs a clock read and a
/// `sched_getcpu` per wake, and now and then a `getsockopt` and a read of `schedstat`.
#[derive(Clone, Copy)]
struct PeerCpu {
    on: bool,
    last: libc::c_int,
    wakes: u32,
    delay: u64,
}

impl PeerCpu {
    fn new(peer: std::net::IpAddr, batch: bool) -> Self {
        PeerCpu {
            on: batch && peer.to_canonical().is_loopback() && process_cpus().is_some(),
            last: -1,
            wakes: 0,
            delay: 0,
        }
    }

    /// Called after a read that may have slept, begun at `since`.
    fn woke(&mut self, tcp: &std::net::TcpStream, since: std::time::Instant) {
        if !self.on || FANS_OUT.get() {
            return;
        }
        self.wakes = self.wakes.wrapping_add(1);
        if self.wakes < 8 {
            return;
        }
        // SAFETY: no arguments.
        let here = unsafe { libc::sched_getcpu() };
        let long = since.elapsed() >= std::time::Duration::from_millis(1);
        if here == self.last && !long && !self.wakes.is_multiple_of(32) {
            return;
        }
        self.last = here;
        if incoming_cpu(tcp) != Some(here) {
            return;
        }
        // A wake after a wait that ran long: a move only if the thread was runnable (behind
        // the peer) for `RUNNABLE_TO_MOVE` since the last reading, which takes in the wait,
        // not asleep with nothing to read. The reading is taken only here, not at every
        // wait's start, so it may also count earlier waits. Even at a first look: a
        // broadcast's sender looks first at its third chat, which its peer sent and then
        // slept.
        if long {
            if let Some(delay) = run_delay() {
                let waited = delay.wrapping_sub(self.delay);
                self.delay = delay;
                if waited < RUNNABLE_TO_MOVE {
                    return;
                }
            }
        }
        keep_off(here);
    }
}

/// The run delay (nanoseconds) a long wait must hold for `PeerCpu` to move the thread: half a
/// millisecond, well above the few microseconds of a wake-up onto a CPU whose peer then
/// sleeps, well below the tick a batch thread may wait behind a busy one.
const RUNNABLE_TO_MOVE: u64 = 500_000;

/// Nanoseconds the calling thread has spent runnable but not running (the second field of
/// `schedstat`; None where the kernel keeps no such count).
fn run_delay() -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let n = std::fs::File::open("/proc/thread-self/schedstat")
        .ok()?
        .read(&mut buf)
        .ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The CPU that took the socket's last packet (`SO_INCOMING_CPU`).
fn incoming_cpu(tcp: &std::net::TcpStream) -> Option<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of_val(&cpu) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cpu`; the fd belongs to `tcp`.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&mut cpu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && cpu >= 0).then_some(cpu)
}

/// Names the calling thread after its peer, so `top -H` and `/proc/PID/task/*/comm` say which
/// connection each thread serves. The kernel keeps 15 bytes: the last 15, where the port is
/// (an IPv4 address with its port fits whole).
fn name_after_peer(peer: &str) {
    let tail = &peer.as_bytes()[peer.len().saturating_sub(15)..];
    let mut name = [0u8; 16]; // NUL-terminated
    name[..tail.len()].copy_from_slice(tail);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from `name`.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// New unguessable id: 122 random bits (UUID v4), 32 hex digits.
fn new_id() -> String {
    random_uuid().simple().to_string()
}

/// A v4 UUID from the kernel's CSPRNG, drawn 64 bytes at a time per thread: a connection
/// needs up to four (sid, socket id, session, cookie) and each `Uuid::new_v4` is a syscall.
fn random_uuid() -> uuid::Uuid {
    use std::cell::RefCell;
    thread_local!(static POOL: RefCell<([u8; 64], usize)> = const { RefCell::new(([0; 64], 64)) });
    POOL.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used == bytes.len() {
            // SAFETY: getrandom writes at most `len` bytes into the buffer it is given.
            let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
            if n != bytes.len() as isize {
                return uuid::Uuid::new_v4();
            }
            *used = 0;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[*used..*used + 16]);
        *used += 16;
        uuid::Builder::from_random_bytes(id).into_uuid()
    })
}

// ───────────────────────────────────────────────────────────────────────────────────────────
mod engine {
    //! Engine.IO sessions: the session table, the polling / WebSocket / SSE transports, the
    //! upgrade, the heartbeat, the WebSocket write path, and `Engine::close`, the one place a
    //! session ends. Knows nothing of Socket.IO: it hands messages to a `Handler`.
    use crate::config::Config;
    use crate::eio::{self, Out, Packet};
    use crate::http::{self, Request};
    use crate::{lock, log, new_id, prefetch, DEBUG, INFO, WARN};
    use std::any::Any;
    use std::cmp::Ordering as CmpOrdering;
    use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
    use std::io::{self, Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
    use std::time::{Duration, Instant};
    use tungstenite::protocol::{Role, WebSocketConfig};
    use tungstenite::{Message as WsMessage, WebSocket};

    // ── Timers: one thread runs every deadline (pings, pong checks, connect and ack timeouts).

    pub struct Timers {
        heap: Mutex<BinaryHeap<Timer>>,
        wake: Condvar,
        seq: AtomicU64,
    }

    struct Timer {
        at: Instant,
        seq: u64,
        run: Box<dyn FnOnce() + Send>,
    }
    impl PartialEq for Timer {
        fn eq(&self, other: &Self) -> bool {
            (self.at, self.seq) == (other.at, other.seq)
        }
    }
    impl Eq for Timer {}
    impl PartialOrd for Timer {
        fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Timer {
        // Reversed: BinaryHeap is a max-heap and the earliest deadline must come out first.
        fn cmp(&self, other: &Self) -> CmpOrdering {
            (other.at, other.seq).cmp(&(self.at, self.seq))
        }
    }

    impl Timers {
        /// Starts the timers thread with a `stack`-byte stack: it runs handlers (ack
        /// timeouts, the close of a session whose client stopped reading), as connection
        /// threads do, so it gets their `--thread-stack`.
        pub fn start(stack: usize) -> Arc<Timers> {
            let timers = Arc::new(Timers {
                heap: Mutex::new(BinaryHeap::new()),
                wake: Condvar::new(),
                seq: AtomicU64::new(0),
            });
            let t = timers.clone();
            std::thread::Builder::new()
                .name("timers".into())
                .stack_size(stack)
                .spawn(move || t.run())
                .expect("the timers thread starts at boot, before any client");
            timers
        }

        pub fn at(&self, at: Instant, run: impl FnOnce() + Send + 'static) {
            let timer = Timer {
                at,
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
                run: Box::new(run),
            };
            let mut heap = lock(&self.heap);
            let earliest = heap.peek().is_none_or(|t| at < t.at);
            heap.push(timer);
            if earliest {
                self.wake.notify_one();
            }
        }

        pub fn after(&self, delay: Duration, run: impl FnOnce() + Send + 'static) {
            self.at(Instant::now() + delay, run)
        }

        fn run(&self) {
            let mut heap = lock(&self.heap);
            loop {
                let now = Instant::now();
                let mut due = Vec::new();
                while heap.peek().is_some_and(|t| t.at <= now) {
                    due.extend(heap.pop());
                }
                // After a crowd has left, give back the room its timers took (MiBs at 10k).
                if heap.capacity() > 1024 && heap.len() < heap.capacity() / 4 {
                    let keep = heap.len() * 2;
                    heap.shrink_to(keep);
                }
                if due.is_empty() {
                    let wait = heap
                        .peek()
                        .map_or(Duration::from_secs(3600), |t| t.at - now);
                    heap = self
                        .wake
                        .wait_timeout(heap, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
                drop(heap);
                for timer in due {
                    // A panicking callback (an app ack handler) must not stop every heartbeat.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(timer.run)).is_err() {
                        log!(
                            crate::ERROR,
                            "a timer callback panicked; the timers thread goes on"
                        );
                    }
                }
                heap = lock(&self.heap);
            }
        }
    }

    // ── The WebSocket write path: senders write whole frames straight to the socket without
    // blocking; what the kernel will not take waits in a bounded backlog drained by a writer
    // thread that exists only while the backlog does.

    #[derive(Clone)]
    pub enum Chunk {
        Out(Arc<Out>),
        Raw(Arc<[u8]>),
    }
    impl Chunk {
        fn bytes(&self) -> &[u8] {
            match self {
                Chunk::Out(o) => o.ws_frame(),
                Chunk::Raw(r) => r,
            }
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum SendError {
        Closed,
        Full(&'static str),
    }

    static WRITERS: AtomicUsize = AtomicUsize::new(0);

    pub struct WsConn {
        tcp: Arc<TcpStream>,
        backlog: Mutex<Backlog>,
        max_bytes: usize,
        max_packets: usize,
        max_writers: usize,
    }

    #[derive(Default)]
    struct Backlog {
        /// Unsent chunks; the first may be partly sent (its offset beside it).
        chunks: VecDeque<(Chunk, usize)>,
        bytes: usize,
        closed: bool,
        /// A writer thread is draining `chunks`.
        writer: bool,
        /// The reader is handling a frame: what is sent meanwhile gathers in `chunks` and goes
        /// out in one `sendmsg` when it is done (a CONNECT's confirmation and the handler's
        /// first event travel together, not as two segments and two wake-ups of the client).
        corked: bool,
    }

    /// Gathers up to this many chunks into one `sendmsg`.
    const MAX_IOV: usize = 16;
    /// Under the cork, a batch this large (or of `MAX_IOV` chunks) is sent without waiting.
    const CORK_BYTES: usize = 64 * 1024;
    /// Backlog storage kept once empty: the few chunks a handler sends per frame (96 bytes).
    const KEEP_CHUNKS: usize = 4;

    /// `sendmsg(2)` of the chunks (the first from its offset) without blocking: the bytes
    /// written, stopping early when the socket buffer is full.
    fn sendmsg_nonblocking(fd: i32, chunks: &VecDeque<(Chunk, usize)>) -> io::Result<usize> {
        if let ([(c, off)], []) | ([], [(c, off)]) = chunks.as_slices() {
            return send_nonblocking(fd, &c.bytes()[*off..]); // the usual reply: no iovecs
        }
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = [empty; MAX_IOV];
        let mut total = 0;
        loop {
            let mut used = 0;
            let mut skip = total;
            for (c, off) in chunks {
                let bytes = &c.bytes()[*off..];
                if skip >= bytes.len() {
                    skip -= bytes.len();
                    continue;
                }
                let rest = &bytes[skip..];
                skip = 0;
                iov[used] = libc::iovec {
                    iov_base: rest.as_ptr() as *mut libc::c_void,
                    iov_len: rest.len(),
                };
                used += 1;
                if used == MAX_IOV {
                    break;
                }
            }
            if used == 0 {
                return Ok(total);
            }
            // SAFETY: every iovec points into a chunk borrowed for this call; msghdr is zeroed
            // apart from the iovec array it names.
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = used as _;
                libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if n >= 0 {
                total += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(total),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }

    /// `send(2)` without blocking: `Ok(bytes written)`, stopping early when the buffer is full.
    fn send_nonblocking(fd: i32, data: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < data.len() {
            // SAFETY: the pointer and length describe a live slice; the fd is owned by a
            // TcpStream that outlives this call.
            let n = unsafe {
                libc::send(
                    fd,
                    data[done..].as_ptr().cast(),
                    data.len() - done,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                done += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        Ok(done)
    }

    /// One blocking `send(2)`; the writer thread's only IO.
    fn send_blocking(fd: i32, data: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: as in send_nonblocking.
            let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    impl WsConn {
        /// Whether bytes wait on the socket, not yet read (a peek: nothing is taken).
        fn unread(&self) -> bool {
            let peek = http::recv(&self.tcp, &mut [0], libc::MSG_PEEK | libc::MSG_DONTWAIT);
            matches!(peek, Ok(n) if n > 0)
        }

        pub fn new(tcp: Arc<TcpStream>, cfg: &Config) -> Arc<WsConn> {
            Arc::new(WsConn {
                tcp,
                backlog: Mutex::default(),
                max_bytes: cfg.max_queue_bytes,
                max_packets: cfg.max_queue_packets,
                max_writers: cfg.max_writers,
            })
        }

        pub fn send(self: &Arc<Self>, chunk: Chunk) -> Result<(), SendError> {
            let mut b = lock(&self.backlog);
            if b.closed {
                return Err(SendError::Closed);
            }
            let len = chunk.bytes().len();
            if b.writer || b.corked {
                b.bytes += len;
                b.chunks.push_back((chunk, 0));
                let batch = (
                    MAX_IOV.min(self.max_packets),
                    CORK_BYTES.min(self.max_bytes),
                );
                if !b.writer && (b.chunks.len() >= batch.0 || b.bytes >= batch.1) {
                    self.flush_gathered(&mut b)?; // a long burst goes out in batches
                }
                if b.bytes > self.max_bytes || b.chunks.len() > self.max_packets {
                    b.closed = true; // takes nothing more; the writer thread stops
                    return Err(SendError::Full("send backlog full (client not reading)"));
                }
                return Ok(());
            }
            let sent = match send_nonblocking(self.tcp.as_raw_fd(), chunk.bytes()) {
                Ok(n) => n,
                Err(_) => {
                    b.closed = true;
                    let _ = self.tcp.shutdown(Shutdown::Both);
                    return Err(SendError::Closed);
                }
            };
            if sent == len {
                return Ok(());
            }
            b.bytes = len - sent;
            b.chunks.push_back((chunk, sent));
            self.start_writer(&mut b)
        }

        /// Holds back what is sent on this connection until `uncork`.
        pub fn cork(&self) {
            lock(&self.backlog).corked = true;
        }

        /// Sends what gathered since `cork`, in one `sendmsg`; what the socket does not take
        /// now goes to a writer thread, as in `send`.
        pub fn uncork(self: &Arc<Self>) -> Result<(), SendError> {
            let mut b = lock(&self.backlog);
            b.corked = false;
            self.flush_gathered(&mut b)
        }

        /// Sends what gathered under the cork, unless a writer thread owns the backlog.
        fn flush_gathered(self: &Arc<Self>, b: &mut Backlog) -> Result<(), SendError> {
            if b.writer || b.closed || b.chunks.is_empty() {
                return Ok(());
            }
            let mut sent = match sendmsg_nonblocking(self.tcp.as_raw_fd(), &b.chunks) {
                Ok(n) => n,
                Err(_) => {
                    b.closed = true;
                    b.chunks.clear();
                    let _ = self.tcp.shutdown(Shutdown::Both);
                    return Err(SendError::Closed);
                }
            };
            b.bytes -= sent.min(b.bytes);
            while let Some((c, off)) = b.chunks.front_mut() {
                let left = c.bytes().len() - *off;
                if sent < left {
                    *off += sent;
                    break;
                }
                sent -= left;
                b.chunks.pop_front();
            }
            if b.chunks.is_empty() {
                // A burst's storage would otherwise stay allocated for the connection's life;
                // a small one is kept, or every frame under the cork would allocate it anew.
                if b.chunks.capacity() > KEEP_CHUNKS {
                    b.chunks = VecDeque::new();
                }
                return Ok(());
            }
            self.start_writer(b)
        }

        /// Hands the backlog to a writer thread (at most `--max-writers` at once).
        fn start_writer(self: &Arc<Self>, b: &mut Backlog) -> Result<(), SendError> {
            if WRITERS.fetch_add(1, Ordering::Relaxed) >= self.max_writers {
                WRITERS.fetch_sub(1, Ordering::Relaxed);
                return Err(SendError::Full(
                    "too many slow consumers at once (--max-writers)",
                ));
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("ws-writer".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    me.drain();
                    WRITERS.fetch_sub(1, Ordering::Relaxed);
                });
            if spawned.is_err() {
                WRITERS.fetch_sub(1, Ordering::Relaxed);
                return Err(SendError::Full("could not start a writer thread"));
            }
            b.writer = true;
            Ok(())
        }

        /// The writer thread: sends the backlog's head with blocking writes, never holding the
        /// lock across one, and ends when the backlog is empty or the connection closed.
        fn drain(&self) {
            let fd = self.tcp.as_raw_fd();
            loop {
                let (chunk, offset) = {
                    let mut b = lock(&self.backlog);
                    match b.chunks.front() {
                        Some((c, off)) if !b.closed => (c.clone(), *off),
                        _ => {
                            b.chunks.clear();
                            b.bytes = 0;
                            b.writer = false;
                            return;
                        }
                    }
                };
                let result = send_blocking(fd, &chunk.bytes()[offset..]);
                let mut b = lock(&self.backlog);
                match result {
                    Ok(n) => {
                        b.bytes -= n.min(b.bytes);
                        let len = chunk.bytes().len();
                        if let Some(front) = b.chunks.front_mut() {
                            front.1 += n;
                            if front.1 >= len {
                                b.chunks.pop_front();
                            }
                        }
                    }
                    Err(_) => {
                        b.closed = true;
                        let _ = self.tcp.shutdown(Shutdown::Both);
                    }
                }
            }
        }

        /// Ends the connection: optionally a last frame (Engine.IO close + WebSocket close)
        /// if the socket takes it now, then shutdown, which also wakes its reader.
        pub fn close(&self, last: Option<&[u8]>) {
            let mut b = lock(&self.backlog);
            self.send_gathered_before_closing(&mut b);
            if !b.closed && b.chunks.is_empty() {
                if let Some(bytes) = last {
                    let _ = send_nonblocking(self.tcp.as_raw_fd(), bytes);
                }
            }
            b.closed = true;
            drop(b);
            let _ = self.tcp.shutdown(Shutdown::Both);
        }

        /// The peer closed: what was gathered (our close reply among it) goes, then nothing.
        fn mark_closed(&self) {
            let mut b = lock(&self.backlog);
            self.send_gathered_before_closing(&mut b);
            b.closed = true;
        }

        /// What gathered under a cork was accepted before the close, so it goes first, if
        /// the socket takes it now (no writer thread is started for a closing connection).
        fn send_gathered_before_closing(&self, b: &mut Backlog) {
            let gathered = !b.closed && !b.writer && !b.chunks.is_empty();
            if gathered
                && sendmsg_nonblocking(self.tcp.as_raw_fd(), &b.chunks).ok() == Some(b.bytes)
            {
                b.chunks.clear();
            }
        }
    }

    /// The stream tungstenite reads from: reads come off the socket; its own writes (pong and
    /// close replies) go through the same write path as ours, so frames never interleave.
    struct WsIo {
        tcp: Arc<TcpStream>,
        conn: Arc<WsConn>,
        spin: http::Spin,
        peer_cpu: crate::PeerCpu,
        /// Probed (`2probe` came), not yet upgraded (`5` has not): the session, whose reads
        /// go through `read_probing`.
        probing: Option<Arc<Session>>,
        /// The old transport's noop, sent once this WebSocket has nothing more to read, so
        /// a `5` that came with the `2probe` is handled first.
        noop_owed: bool,
    }
    impl Read for WsIo {
        /// With a CPU to spare, a thread that was just woken polls before it blocks again: a
        /// message that arrives meanwhile is read without the wake-up of an idle vCPU, which
        /// is most of a lone client's round trip on a VM (README, performance).
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(s) = self.probing.clone() {
                return self.read_probing(&s, buf);
            }
            let spin = self.spin.allowed(LIVE_WS.load(Ordering::Relaxed));
            if let Some(budget) = self.spin.budget().filter(|_| spin) {
                if let Some(n) = http::poll_recv(&self.tcp, buf, budget)? {
                    return Ok(n);
                }
            }
            let since = Instant::now();
            let n = (&*self.tcp).read(buf)?;
            if spin {
                self.spin.waited(since);
            }
            self.peer_cpu.woke(&self.tcp, since);
            Ok(n)
        }
    }

    impl WsIo {
        /// Reads between `2probe` and `5`. Bytes are taken off the socket under the session's
        /// lock and count as in hand until the next read, by when they have been handled. A
        /// GET that comes meanwhile on another connection thus finds a `5` its client sent
        /// before it still unread or in hand, and waits for it (`State::probe_unread`), as on
        /// a server that reads in arrival order.
        fn read_probing(&mut self, s: &Arc<Session>, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                {
                    let mut st = lock(&s.state);
                    if std::mem::take(&mut st.probe_in_hand) {
                        s.wake_waiters(&st);
                    }
                    if let Some(n) = http::poll_recv(&self.tcp, buf, Duration::ZERO)? {
                        st.probe_in_hand = n > 0;
                        return Ok(n);
                    }
                }
                if std::mem::take(&mut self.noop_owed) {
                    s.send_all(&[shared(&NOOP, "6")]);
                    log!(DEBUG, "{} probed: the old transport got its noop", s.sid);
                }
                // Wait for bytes without taking them, then take them above.
                if http::recv(&self.tcp, &mut [0], libc::MSG_PEEK)? == 0 {
                    return Ok(0);
                }
            }
        }
    }

    /// WebSocket connections being read now. While they are fewer than the CPUs, a thread
    /// that polls takes a CPU nobody else wants; past that it would take one from a peer.
    static LIVE_WS: AtomicUsize = AtomicUsize::new(0);

    impl Write for WsIo {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.conn.send(Chunk::Raw(buf.into())) {
                Ok(()) => Ok(buf.len()),
                Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn close_frame(code: u16, reason: &str) -> Vec<u8> {
        let mut f = vec![0x88, (2 + reason.len()) as u8];
        f.extend_from_slice(&code.to_be_bytes());
        f.extend_from_slice(reason.as_bytes());
        f
    }

    // ── Sessions.

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Transport {
        Polling,
        WebSocket,
        Sse,
    }
    impl Transport {
        pub fn name(self) -> &'static str {
            match self {
                Transport::Polling => "polling",
                Transport::WebSocket => "websocket",
                Transport::Sse => "sse",
            }
        }
    }

    pub struct Session {
        pub sid: String,
        /// The app's session cookie value (a UUID), if the engine sets one.
        pub cookie: Option<String>,
        /// Whether the client sent that cookie (false: it was issued by this handshake).
        pub cookie_given: bool,
        pub peer: String,
        engine: Weak<Engine>,
        /// `--max-queue-packets` and `--max-queue-bytes`, read on every queued packet.
        queue_limits: (usize, usize),
        state: Mutex<State>,
        wake: Condvar,
        /// The layer above keeps its per-session state here.
        pub ext: OnceLock<Box<dyn Any + Send + Sync>>,
    }

    struct State {
        transport: Transport,
        closed: Option<String>,
        /// Outbound packets for polling and SSE (and for WebSocket while an upgrade runs).
        queue: VecDeque<Arc<Out>>,
        queued_bytes: usize,
        /// The WebSocket, once upgraded (or while probing an upgrade).
        ws: Option<Arc<WsConn>>,
        upgrading: bool,
        /// The probing WebSocket's thread has taken bytes it has not finished handling.
        probe_in_hand: bool,
        /// The old transport delivered its noop and waits out the upgrade: it sends no more.
        paused: bool,
        poll_waiting: bool,
        /// A GET with nothing to deliver is answered at once with a noop, not held
        /// (`Session::answer_polls_at_once`).
        polls_at_once: bool,
        /// Threads in `Session::wait` (a pending GET, an SSE stream): only then is there
        /// anyone to notify.
        waiters: u32,
        /// When the pong for the oldest unanswered ping is due (`Session::pong_overdue`); a
        /// pong answers them all.
        pong_due: Option<Instant>,
        sse: SseLog,
    }

    /// SSE event ids and the packets kept for `Last-Event-ID` resume.
    #[derive(Default)]
    struct SseLog {
        next_id: u64,
        sent: VecDeque<(u64, Arc<Out>)>,
        /// Payload bytes in `sent`.
        bytes: usize,
        /// Bumped by each new stream: an older stream thread sees it and ends.
        stream: u64,
    }

    impl SseLog {
        /// Numbers a packet and keeps it for resume, forgetting the oldest past `max_packets`
        /// or `max_bytes` (`--sse-replay`, `--sse-replay-bytes`): a client that has large
        /// messages echoed must not make the server keep thousands of them.
        fn keep(&mut self, p: &Arc<Out>, (max_packets, max_bytes): (usize, usize)) -> u64 {
            let id = self.next_id;
            self.next_id += 1;
            self.bytes += p.payload().len();
            self.sent.push_back((id, p.clone()));
            while self.sent.len() > max_packets || self.bytes > max_bytes {
                let Some((_, old)) = self.sent.pop_front() else {
                    break;
                };
                self.bytes -= old.payload().len();
            }
            id
        }
    }

    impl State {
        fn has_deliverable(&self) -> bool {
            !self.paused && !self.queue.is_empty()
        }

        /// A probing WebSocket has bytes its thread has not read or not yet handled, such as
        /// a `5` its client sent before a GET that came on another connection. That GET
        /// waits until they are handled (`WsIo::read_probing`).
        fn probe_unread(&self) -> bool {
            self.upgrading && (self.probe_in_hand || self.ws.as_ref().is_some_and(|ws| ws.unread()))
        }

        /// What polling or SSE may deliver now: everything queued, except that during an
        /// upgrade the old transport stops after its noop and the rest waits for the WebSocket.
        fn take_deliverable(&mut self) -> Vec<Arc<Out>> {
            let mut out = Vec::new();
            while !self.paused {
                let Some(p) = self.queue.pop_front() else {
                    break;
                };
                self.queued_bytes = self.queued_bytes.saturating_sub(p.payload().len());
                self.paused = self.upgrading && p.is_noop();
                out.push(p);
            }
            out
        }
    }

    fn shared(cell: &'static OnceLock<Arc<Out>>, text: &str) -> Arc<Out> {
        cell.get_or_init(|| Out::text(text)).clone()
    }
    /// The close reason of a session whose client sent the close packet.
    const CLIENT_CLOSE: &str = "client close";
    static PING: OnceLock<Arc<Out>> = OnceLock::new();
    static NOOP: OnceLock<Arc<Out>> = OnceLock::new();
    static CLOSE: OnceLock<Arc<Out>> = OnceLock::new();

    impl Session {
        /// Wakes whoever waits on this session's state. std's notify makes a futex call even
        /// when nobody waits, which on polling was one syscall per queued packet.
        fn wake_waiters(&self, st: &State) {
            if st.waiters > 0 {
                self.wake.notify_all();
            }
        }

        /// Waits for `wake_waiters` or the timeout; true if it timed out.
        fn wait<'a>(
            &self,
            mut st: MutexGuard<'a, State>,
            timeout: Duration,
        ) -> (MutexGuard<'a, State>, bool) {
            st.waiters += 1;
            let (mut st, wait) = self
                .wake
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner());
            st.waiters -= 1;
            (st, wait.timed_out())
        }

        /// Whether a GET with nothing to deliver is answered at once with a noop (a waiting
        /// one is released now) instead of held until there is something. For a client that
        /// left its last namespace: python-socketio then may stop without a close packet and
        /// still send one more GET, which would otherwise wait for the next ping.
        pub fn answer_polls_at_once(self: &Arc<Self>, on: bool) {
            let waiting = {
                let mut st = lock(&self.state);
                st.polls_at_once = on;
                on && st.transport == Transport::Polling && st.poll_waiting
            };
            if waiting {
                self.send_all(&[shared(&NOOP, "6")]);
            }
        }

        /// Starts loading the session's state into the cache, for a fan-out about to send
        /// to it (`hub::Broadcast::emit`).
        pub fn prefetch(&self) {
            let state = (&raw const self.state).cast::<u8>();
            prefetch(state);
            prefetch(state.wrapping_add(64));
        }

        /// Queues packets in order, as one unit (a Socket.IO packet and its attachments must
        /// not interleave with another sender's). Never blocks; a full queue closes the session.
        pub fn send_all(self: &Arc<Self>, packets: &[Arc<Out>]) {
            let overflow = {
                let mut st = lock(&self.state);
                if st.closed.is_some() {
                    return;
                }
                match (&st.ws, st.transport) {
                    (Some(ws), Transport::WebSocket) => packets
                        .iter()
                        .try_for_each(|p| ws.send(Chunk::Out(p.clone())))
                        .err()
                        .map(|e| match e {
                            SendError::Full(why) => why,
                            SendError::Closed => "transport error",
                        }),
                    _ => {
                        st.queue.extend(packets.iter().cloned());
                        st.queued_bytes += packets.iter().map(|p| p.payload().len()).sum::<usize>();
                        self.wake_waiters(&st);
                        let (max_packets, max_bytes) = self.queue_limits;
                        (st.queue.len() > max_packets || st.queued_bytes > max_bytes)
                            .then_some("outbound queue full (client not reading)")
                    }
                }
            };
            if let Some(reason) = overflow {
                // Closing runs the layers above (disconnect handlers, which may broadcast): not
                // here, nested in someone else's send, but next on the timers thread.
                if let Some(engine) = self.engine.upgrade() {
                    let me = self.clone();
                    engine
                        .timers
                        .after(Duration::ZERO, move || me.close(reason));
                }
            }
        }

        pub fn close(self: &Arc<Self>, reason: &str) {
            if let Some(engine) = self.engine.upgrade() {
                engine.close(self, reason);
            }
        }

        /// A name for this session that does not keep its memory alive, for timers.
        pub fn handle(&self) -> SessionRef {
            SessionRef {
                engine: self.engine.clone(),
                sid: self.sid.clone(),
            }
        }

        pub fn transport(&self) -> Transport {
            lock(&self.state).transport
        }

        /// The pong deadline has passed, whether or not the timer that ends the session for
        /// it has run yet (under load it may run late).
        fn pong_overdue(&self) -> bool {
            let due = lock(&self.state).pong_due;
            due.is_some_and(|due| Instant::now() >= due)
        }

        pub fn is_closed(&self) -> bool {
            lock(&self.state).closed.is_some()
        }
    }

    /// Names a session without holding it: a `Weak<Session>` in a pending timer would pin the
    /// whole allocation of a closed session until the timer fires (up to the connect timeout),
    /// which under churn is tens of thousands of dead sessions.
    pub struct SessionRef {
        engine: Weak<Engine>,
        sid: String,
    }
    impl SessionRef {
        /// The session, while it is open.
        pub fn get(&self) -> Option<Arc<Session>> {
            self.engine.upgrade()?.get(&self.sid)
        }
    }

    // ── The engine.

    pub enum Message<'a> {
        Text(&'a str),
        Binary(&'a [u8]),
    }

    /// What the layer above (Socket.IO, or the raw echo) does with a session.
    pub trait Handler: Send + Sync {
        fn open(&self, session: &Arc<Session>);
        /// `Err(reason)` is a protocol error: the session is closed with that reason.
        fn message(&self, session: &Arc<Session>, msg: Message) -> Result<(), String>;
        fn close(&self, session: &Arc<Session>, reason: &str);
    }

    pub struct Engine {
        pub cfg: Arc<Config>,
        pub timers: Arc<Timers>,
        sessions: Mutex<HashMap<String, Arc<Session>>>,
        /// Polling sessions the client closed while none of its GETs waited. A GET sent with
        /// the close may be read after it, on another connection; it gets the noop it would
        /// have got had it been read first. Kept until that GET or `--header-timeout`, for
        /// at most `--max-sessions` sessions.
        close_noops: Mutex<HashSet<String>>,
        handler: Arc<dyn Handler>,
        /// Name of the cookie set on the handshake (PROTOCOL.md §4), if any.
        cookie: Option<&'static str>,
        me: Weak<Engine>,
    }

    /// What the connection does after a request: keep reading requests, end, or serve the
    /// WebSocket it was upgraded to. The last is returned rather than run in place so that
    /// the request, its buffers and the handshake's temporaries are freed first: they would
    /// otherwise stay allocated for the life of the connection (~3 KiB each, measured).
    pub enum Next {
        KeepAlive,
        Close,
        WebSocket(Box<Upgraded>),
    }

    impl Next {
        /// After a response: keep the connection if the request asked to and it was written.
        pub fn after(written: io::Result<()>, keep_alive: bool) -> Next {
            match written {
                Ok(()) if keep_alive => Next::KeepAlive,
                _ => Next::Close,
            }
        }
    }

    /// A WebSocket past its handshake, with the session it carries.
    pub struct Upgraded {
        engine: Arc<Engine>,
        s: Arc<Session>,
        ws: WebSocket<WsIo>,
        conn: Arc<WsConn>,
    }

    impl Upgraded {
        /// Reads frames until the session or the socket ends. Boxed, and used in place: the
        /// WebSocket state moved onto the stack would deepen every connection's stack.
        pub fn run(mut self: Box<Self>) {
            LIVE_WS.fetch_add(1, Ordering::AcqRel);
            let _live = crate::Slot(&LIVE_WS);
            let up = &mut *self;
            up.engine.read_frames(&up.s, &mut up.ws, &up.conn);
        }
    }

    /// The Engine.IO error table (PROTOCOL.md §1).
    fn error_message(code: u8) -> &'static str {
        match code {
            0 => "Transport unknown",
            1 => "Session ID unknown",
            2 => "Bad handshake method",
            3 => "Bad request",
            4 => "Forbidden",
            _ => "Unsupported protocol version",
        }
    }

    /// Per-request context: the connection and the CORS headers its answers carry.
    pub struct Conn<'a> {
        pub tcp: &'a Arc<TcpStream>,
        pub peer: &'a str,
        pub peer_cpu: &'a crate::PeerCpu,
        pub leftover: &'a mut Vec<u8>,
        pub read_timeout: &'a mut http::ReadTimeout,
    }

    impl Engine {
        pub fn new(
            cfg: Arc<Config>,
            timers: Arc<Timers>,
            handler: Arc<dyn Handler>,
            cookie: Option<&'static str>,
        ) -> Arc<Engine> {
            Arc::new_cyclic(|me| Engine {
                cfg,
                timers,
                sessions: Mutex::default(),
                close_noops: Mutex::default(),
                handler,
                cookie,
                me: me.clone(),
            })
        }

        pub fn sessions(&self) -> Vec<Arc<Session>> {
            lock(&self.sessions).values().cloned().collect()
        }

        fn get(&self, sid: &str) -> Option<Arc<Session>> {
            lock(&self.sessions).get(sid).cloned()
        }

        fn error(&self, c: &Conn, cors: &[(&str, &str)], code: u8, keep_alive: bool) -> Next {
            let status = if code == 4 { 403 } else { 400 };
            let body = format!(
                "{{\"code\":{code},\"message\":\"{}\"}}",
                error_message(code)
            );
            let mut headers = vec![("Content-Type", "application/json")];
            headers.extend_from_slice(cors);
            log!(DEBUG, "{} answered {status} code {code}", c.peer);
            let written = http::respond(c.tcp, status, &headers, body.as_bytes(), keep_alive);
            Next::after(written, keep_alive)
        }

        /// Serves one request on this engine's path.
        pub fn serve(&self, req: &Request, c: &mut Conn) -> Next {
            let cors_owned = match http::cors(
                req.header("origin"),
                req.header("host"),
                &self.cfg.allowed_origins,
            ) {
                Ok(h) => h,
                Err(()) => {
                    log!(
                        WARN,
                        "{} refused: origin {:?} not allowed",
                        c.peer,
                        req.header("origin").filter(|o| http::header_safe(o))
                    );
                    return self.error(c, &[], 4, false);
                }
            };
            let cors: Vec<(&str, &str)> =
                cors_owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let keep_alive = req.keep_alive && !req.oversize;
            if req.method() == "OPTIONS" {
                let mut h = cors.clone();
                h.push(("Access-Control-Allow-Methods", "GET, POST, OPTIONS"));
                h.push((
                    "Access-Control-Allow-Headers",
                    "content-type, last-event-id",
                ));
                let written = http::respond(c.tcp, 204, &h, b"", keep_alive);
                return Next::after(written, keep_alive);
            }
            let [eio, transport, sid] = req.params(["EIO", "transport", "sid"]);
            if eio.as_deref() != Some("4") {
                return self.error(c, &cors, 5, keep_alive);
            }
            let transport = match transport.as_deref() {
                Some("polling") => Transport::Polling,
                Some("websocket") => Transport::WebSocket,
                Some("sse") => Transport::Sse,
                _ => return self.error(c, &cors, 0, keep_alive),
            };
            let wants_ws = req.header_has("upgrade", "websocket");
            if wants_ws != (transport == Transport::WebSocket) {
                return self.error(c, &cors, 3, keep_alive);
            }
            let Some(sid) = sid else {
                if let (Transport::Sse, Some(last)) = (transport, req.header("last-event-id")) {
                    return self.sse_resume(req, c, &cors, last);
                }
                if req.method() != "GET" {
                    return self.error(c, &cors, 2, keep_alive);
                }
                return self.handshake(req, c, &cors, transport);
            };
            let s = match self.get(&sid) {
                // A request after the pong deadline finds the session ended, as it would be
                // had the timer that ends it run on time.
                Some(s) if s.pong_overdue() => {
                    self.close(&s, "ping timeout");
                    None
                }
                s => s,
            };
            let Some(s) = s else {
                if transport == Transport::Polling
                    && req.method() == "GET"
                    && lock(&self.close_noops).remove(&*sid)
                {
                    return self.poll_answer(c, &cors, &[shared(&NOOP, "6")], keep_alive, None);
                }
                return self.error(c, &cors, 1, keep_alive);
            };
            let current = s.transport();
            match (transport, req.method()) {
                (Transport::WebSocket, "GET") => self.websocket(req, c, &cors, Some(s)),
                (Transport::Polling, "GET") if current == Transport::Polling => {
                    self.poll(&s, c, &cors, keep_alive)
                }
                (t, "POST") if t == current && t != Transport::WebSocket => {
                    self.post(&s, req, c, &cors)
                }
                _ => self.error(c, &cors, 3, keep_alive),
            }
        }

        fn open_packet(&self, sid: &str, transport: Transport) -> Arc<Out> {
            let upgrades = if transport == Transport::WebSocket {
                "[]"
            } else {
                "[\"websocket\"]"
            };
            Out::text_with(|b| {
                let _ = write!(
                    b,
                    "0{{\"sid\":\"{sid}\",\"upgrades\":{upgrades},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
                    self.cfg.ping_interval.as_millis(),
                    self.cfg.ping_timeout.as_millis(),
                    self.cfg.max_payload
                );
            })
        }

        /// The session cookie: the request's if it carries a valid one, else a new one (and
        /// the `Set-Cookie` header that sets it).
        fn session_cookie(&self, req: &Request) -> (Option<String>, Option<String>) {
            let Some(name) = self.cookie else {
                return (None, None);
            };
            let given = req.header("cookie").and_then(|all| {
                all.split(';').find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name && uuid::Uuid::parse_str(v).is_ok()).then(|| v.to_string())
                })
            });
            match given {
                Some(v) => (Some(v), None),
                None => {
                    let v = crate::random_uuid().to_string();
                    let set = format!("{name}={v}; Path=/; HttpOnly; SameSite=Lax");
                    (Some(v), Some(set))
                }
            }
        }

        fn handshake(
            &self,
            req: &Request,
            c: &mut Conn,
            cors: &[(&str, &str)],
            transport: Transport,
        ) -> Next {
            // A polling session holds no connection between requests, so the connection cap
            // does not bound sessions: without this, one client pipelining handshakes opens
            // ~120k a second, each kept until the connect timeout.
            if lock(&self.sessions).len() >= self.cfg.max_sessions {
                log!(DEBUG, "{} answered 503: too many sessions", c.peer);
                let mut headers = vec![("Retry-After", "1"), ("Content-Type", "text/plain")];
                headers.extend_from_slice(cors);
                let body = b"server busy: too many sessions";
                let written = http::respond(c.tcp, 503, &headers, body, req.keep_alive);
                return Next::after(written, req.keep_alive);
            }
            if transport == Transport::WebSocket {
                return self.websocket(req, c, cors, None);
            }
            let (cookie, set_cookie) = self.session_cookie(req);
            let given = set_cookie.is_none();
            let s = self.create(transport, (cookie, given), c.peer, None);
            let open = self.open_packet(&s.sid, transport);
            let mut headers = cors.to_vec();
            if let Some(set) = &set_cookie {
                headers.push(("Set-Cookie", set));
            }
            match transport {
                Transport::Polling => {
                    headers.push(("Content-Type", "text/plain; charset=UTF-8"));
                    let written =
                        http::respond(c.tcp, 200, &headers, open.payload(), req.keep_alive);
                    let next = Next::after(written, req.keep_alive);
                    self.handler.open(&s);
                    next
                }
                _ => {
                    s.send_all(&[open]);
                    self.handler.open(&s);
                    self.sse_stream(&s, c, &headers, None)
                }
            }
        }

        /// Registers a new session and starts its heartbeat and bookkeeping.
        fn create(
            &self,
            transport: Transport,
            cookie: (Option<String>, bool),
            peer: &str,
            ws: Option<Arc<WsConn>>,
        ) -> Arc<Session> {
            let s = Arc::new(Session {
                sid: new_id(),
                cookie: cookie.0,
                cookie_given: cookie.1,
                peer: peer.to_string(),
                engine: self.me.clone(),
                queue_limits: (self.cfg.max_queue_packets, self.cfg.max_queue_bytes),
                state: Mutex::new(State {
                    transport,
                    closed: None,
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    ws,
                    upgrading: false,
                    probe_in_hand: false,
                    paused: false,
                    poll_waiting: false,
                    polls_at_once: false,
                    waiters: 0,
                    pong_due: None,
                    sse: SseLog::default(),
                }),
                wake: Condvar::new(),
                ext: OnceLock::new(),
            });
            lock(&self.sessions).insert(s.sid.clone(), s.clone());
            self.schedule_ping(&s, Instant::now() + self.cfg.ping_interval);
            log!(INFO, "open {} {} from {}", s.sid, transport.name(), peer);
            s
        }

        // ── Heartbeat. EIO4: the server pings every pingInterval counted from the handshake;
        // the pong deadline starts when the ping is queued; no grace period.

        fn schedule_ping(&self, s: &Arc<Session>, at: Instant) {
            let (session, engine) = (s.handle(), self.me.clone());
            self.timers.at(at, move || {
                if let (Some(s), Some(e)) = (session.get(), engine.upgrade()) {
                    e.ping(&s, at);
                }
            });
        }

        fn ping(&self, s: &Arc<Session>, due: Instant) {
            // EIO4: the pong deadline starts when the ping is queued.
            let pong_due = Instant::now() + self.cfg.ping_timeout;
            {
                let mut st = lock(&s.state);
                if st.closed.is_some() {
                    return;
                }
                st.pong_due.get_or_insert(pong_due);
            }
            s.send_all(&[shared(&PING, "2")]);
            let (session, engine) = (s.handle(), self.me.clone());
            self.timers.at(pong_due, move || {
                if let (Some(s), Some(e)) = (session.get(), engine.upgrade()) {
                    if s.pong_overdue() {
                        e.close(&s, "ping timeout");
                    }
                }
            });
            self.schedule_ping(s, due + self.cfg.ping_interval);
        }

        // ── Inbound packets, whatever the transport.

        /// A text packet from any transport. The common case, a message, is handed up
        /// without copying.
        fn on_text(&self, s: &Arc<Session>, text: &str) -> Result<(), String> {
            match text.as_bytes().first() {
                Some(b'4') => self.handler.message(s, Message::Text(&text[1..])),
                _ => self.on_packet(s, eio::decode(text).map_err(|e| e.to_string())?),
            }
        }

        fn on_packet(&self, s: &Arc<Session>, p: Packet) -> Result<(), String> {
            match p {
                Packet::Message(text) => self.handler.message(s, Message::Text(&text)),
                Packet::Binary(data) => self.handler.message(s, Message::Binary(&data)),
                Packet::Pong(_) => {
                    if s.pong_overdue() {
                        self.close(s, "ping timeout");
                        return Ok(());
                    }
                    lock(&s.state).pong_due = None;
                    Ok(())
                }
                Packet::Close => {
                    self.close(s, CLIENT_CLOSE);
                    Ok(())
                }
                // EIO4: pings go server to client only; open/upgrade/noop are the server's.
                Packet::Ping(_) => Err("invalid heartbeat direction (client ping)".into()),
                Packet::Open(_) | Packet::Upgrade | Packet::Noop => {
                    Err("unexpected packet from client".into())
                }
            }
        }

        // ── Long-polling.

        fn poll(
            &self,
            s: &Arc<Session>,
            c: &mut Conn,
            cors: &[(&str, &str)],
            keep_alive: bool,
        ) -> Next {
            let mut st = lock(&s.state);
            if st.poll_waiting {
                drop(st);
                self.close(s, "a second GET while one was pending");
                return self.error(c, cors, 3, false);
            }
            st.poll_waiting = true;
            let at_once =
                st.polls_at_once && !st.upgrading && st.closed.is_none() && !st.has_deliverable();
            if !at_once && !st.has_deliverable() {
                log!(DEBUG, "{} GET waits", s.sid);
            }
            let mut gone = false;
            while !at_once && st.closed.is_none() && st.transport == Transport::Polling {
                if st.has_deliverable() && !st.probe_unread() {
                    break;
                }
                let (guard, timed_out) = s.wait(st, Duration::from_millis(500));
                st = guard;
                // A client that dropped its connection during the GET has gone.
                if timed_out && peer_gone(c.tcp) {
                    gone = true;
                    break;
                }
            }
            st.poll_waiting = false;
            if gone {
                drop(st);
                self.close(s, "transport close (pending GET dropped)");
                return Next::Close;
            }
            if !at_once && st.closed.is_none() && !st.has_deliverable() {
                // The upgrade finished while this GET waited, and no noop was owed to it (a
                // client sends `5` only once its GET got that noop): as after the upgrade, 400.
                drop(st);
                return self.error(c, cors, 3, keep_alive);
            }
            let mut packets = st.take_deliverable();
            if at_once {
                packets.push(shared(&NOOP, "6"));
            } else if st.closed.as_deref() == Some(CLIENT_CLOSE) {
                // The client closed on another request; this GET only needs releasing (the
                // reference server answers it with a noop too), and no later one is owed it.
                lock(&self.close_noops).remove(&s.sid);
                packets.push(shared(&NOOP, "6"));
            } else if st.closed.is_some() {
                packets.push(shared(&CLOSE, "1"));
            }
            drop(st);
            self.poll_answer(c, cors, &packets, keep_alive, Some(s))
        }

        /// A GET's 200 with `packets`; a write that fails closes `session`.
        fn poll_answer(
            &self,
            c: &Conn,
            cors: &[(&str, &str)],
            packets: &[Arc<Out>],
            keep_alive: bool,
            session: Option<&Arc<Session>>,
        ) -> Next {
            let mut headers = cors.to_vec();
            headers.push(("Content-Type", "text/plain; charset=UTF-8"));
            let written = http::respond(
                c.tcp,
                200,
                &headers,
                &eio::encode_payload(packets),
                keep_alive,
            );
            if let (Err(_), Some(s)) = (&written, session) {
                self.close(s, "transport error (poll response not written)");
            }
            Next::after(written, keep_alive)
        }

        fn post(
            &self,
            s: &Arc<Session>,
            req: &Request,
            c: &mut Conn,
            cors: &[(&str, &str)],
        ) -> Next {
            if req.oversize {
                self.close(s, "payload too large");
                let _ = http::respond(c.tcp, 413, cors, b"payload too large", false);
                return Next::Close;
            }
            let result = eio::decode_payload(&req.body, self.cfg.max_packets)
                .map_err(|e| e.to_string())
                .and_then(|packets| packets.into_iter().try_for_each(|p| self.on_packet(s, p)));
            if let Err(reason) = result {
                self.close(s, &format!("parse error: {reason}"));
                return self.error(c, cors, 3, req.keep_alive);
            }
            let mut headers = cors.to_vec();
            headers.push(("Content-Type", "text/html"));
            let written = http::respond(c.tcp, 200, &headers, b"ok", req.keep_alive);
            Next::after(written, req.keep_alive)
        }

        // ── WebSocket: direct (no sid) or an upgrade of a polling/SSE session.

        fn websocket(
            &self,
            req: &Request,
            c: &mut Conn,
            cors: &[(&str, &str)],
            upgrade: Option<Arc<Session>>,
        ) -> Next {
            let key = req.header("sec-websocket-key").filter(|k| !k.is_empty());
            let (Some(key), true) = (key, req.header("sec-websocket-version") == Some("13")) else {
                return self.error(c, cors, 3, false);
            };
            let conn = WsConn::new(c.tcp.clone(), &self.cfg);
            // A session that already has a WebSocket (or is probing one) gets no second: as
            // the reference server does, the handshake completes and the new one is closed.
            let mut refused = false;
            if let Some(s) = &upgrade {
                let mut st = lock(&s.state);
                // A probe under way settles first (within the header timeout): what its
                // client sent before this request is answered before this one is refused.
                let until = Instant::now() + self.cfg.header_timeout;
                if st.upgrading {
                    log!(DEBUG, "{} a second websocket waits for the probe", s.sid);
                }
                while st.upgrading && st.closed.is_none() {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    st = s.wait(st, left).0;
                }
                if st.upgrading || st.transport == Transport::WebSocket || st.closed.is_some() {
                    refused = true;
                } else {
                    st.upgrading = true;
                    st.ws = Some(conn.clone());
                }
            }
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut headers = vec![
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Accept", accept.as_str()),
            ];
            headers.extend_from_slice(cors);
            let (cookie, set_cookie) = if upgrade.is_none() {
                self.session_cookie(req)
            } else {
                (None, None)
            };
            if let Some(set) = &set_cookie {
                headers.push(("Set-Cookie", set));
            }
            let mut head = http::head(101, &headers, None, true);
            let n = head.len();
            head.truncate(n - "Connection: keep-alive\r\n\r\n".len());
            head.extend_from_slice(b"Connection: Upgrade\r\n\r\n");
            // A new session's open packet leaves in the same segment as the 101.
            conn.cork();
            let _ = conn.send(Chunk::Raw(head.into()));
            if refused {
                conn.close(Some(&close_frame(1008, "session has a websocket")));
                let sid = upgrade.as_ref().map_or("", |s| s.sid.as_str());
                log!(DEBUG, "{sid} has a websocket: a second one is closed");
                return Next::Close;
            }
            if upgrade.is_some() && conn.uncork().is_err() {
                if let Some(s) = &upgrade {
                    let mut st = lock(&s.state);
                    st.upgrading = false;
                    st.ws = None;
                }
                return Next::Close;
            }
            c.read_timeout.set(c.tcp, None);
            // tungstenite keeps (and zero-fills) this much per connection; a longer message
            // grows it and takes a `recv` per KiB.
            let ws_cfg = WebSocketConfig::default()
                .read_buffer_size(1024)
                .write_buffer_size(0)
                .max_message_size(Some(self.cfg.max_payload))
                .max_frame_size(Some(self.cfg.max_payload));
            let io = WsIo {
                tcp: c.tcp.clone(),
                conn: conn.clone(),
                spin: http::Spin::new(self.cfg.spin),
                peer_cpu: *c.peer_cpu,
                probing: None,
                noop_owed: false,
            };
            // A copy sized to what is left (usually nothing): the request buffer itself is
            // 4 KiB and tungstenite would keep it as its read buffer.
            let part = std::mem::take(c.leftover).to_vec();
            let mut ws = WebSocket::from_partially_read(io, part, Role::Server, Some(ws_cfg));
            let s = match upgrade {
                Some(s) => match self.probe(&s, &mut ws, &conn) {
                    true => s,
                    false => return Next::Close,
                },
                None => {
                    let given = set_cookie.is_none();
                    let s = self.create(
                        Transport::WebSocket,
                        (cookie, given),
                        c.peer,
                        Some(conn.clone()),
                    );
                    s.send_all(&[self.open_packet(&s.sid, Transport::WebSocket)]);
                    self.handler.open(&s);
                    if conn.uncork().is_err() {
                        self.close(&s, "transport error");
                        return Next::Close;
                    }
                    s
                }
            };
            match self.me.upgrade() {
                Some(engine) => Next::WebSocket(Box::new(Upgraded {
                    engine,
                    s,
                    ws,
                    conn,
                })),
                None => Next::Close,
            }
        }

        /// The upgrade dance: `2probe` → `3probe` (+ `6` to the old transport), then `5`.
        /// Returns whether the session now runs on this WebSocket.
        fn probe(&self, s: &Arc<Session>, ws: &mut WebSocket<WsIo>, conn: &Arc<WsConn>) -> bool {
            let abort = |why: &str| {
                let mut st = lock(&s.state);
                if st.upgrading {
                    st.upgrading = false;
                    st.probe_in_hand = false;
                    st.paused = false;
                    st.ws = None;
                    s.wake_waiters(&st);
                }
                drop(st);
                conn.close(None);
                log!(DEBUG, "upgrade of {} abandoned: {why}", s.sid);
                false
            };
            loop {
                let text = match ws.read() {
                    Ok(WsMessage::Text(t)) => t,
                    Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                    Ok(_) => return abort("unexpected frame during upgrade"),
                    Err(_) => return abort("transport closed during upgrade"),
                };
                match text.as_str() {
                    "2probe" => {
                        if conn.send(Chunk::Out(Out::text("3probe"))).is_err() {
                            return abort("could not answer the probe");
                        }
                        // Release the pending GET (or tell the SSE stream) so the client can
                        // pause it, once what came with the probe is read (`read_probing`).
                        let io = ws.get_mut();
                        io.probing = Some(s.clone());
                        io.noop_owed = true;
                    }
                    "5" => {
                        let io = ws.get_mut();
                        io.probing = None;
                        io.noop_owed = false;
                        let mut st = lock(&s.state);
                        if st.closed.is_some() || !st.upgrading {
                            return false;
                        }
                        st.upgrading = false;
                        st.probe_in_hand = false;
                        st.paused = false;
                        st.transport = Transport::WebSocket;
                        let queued: Vec<Arc<Out>> =
                            st.queue.drain(..).filter(|p| !p.is_noop()).collect();
                        st.queued_bytes = 0;
                        s.wake_waiters(&st);
                        let flushed = queued
                            .into_iter()
                            .try_for_each(|p| conn.send(Chunk::Out(p)));
                        drop(st);
                        log!(INFO, "upgrade {} to websocket", s.sid);
                        if flushed.is_err() {
                            self.close(s, "transport error during upgrade flush");
                            return false;
                        }
                        return true;
                    }
                    _ => return abort("unexpected packet during upgrade"),
                }
            }
        }

        /// The connection thread's loop for an established WebSocket session.
        fn read_frames(&self, s: &Arc<Session>, ws: &mut WebSocket<WsIo>, conn: &Arc<WsConn>) {
            let reason = loop {
                let msg = ws.read();
                conn.cork();
                let result = match msg {
                    Ok(WsMessage::Text(t)) => self.on_text(s, t.as_str()),
                    Ok(WsMessage::Binary(b)) => self.handler.message(s, Message::Binary(&b)),
                    Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => Ok(()),
                    Ok(WsMessage::Close(_)) => {
                        let _ = ws.flush(); // tungstenite's close reply
                        conn.mark_closed();
                        break "transport close".to_string();
                    }
                    Err(tungstenite::Error::Capacity(_)) => {
                        conn.close(Some(&close_frame(1009, "message too big")));
                        break "payload too large".to_string();
                    }
                    Err(tungstenite::Error::Protocol(e)) => {
                        conn.close(Some(&close_frame(1002, "protocol error")));
                        break format!("transport error: {e}");
                    }
                    Err(_) => break "transport close".to_string(),
                };
                if let Err(reason) = result {
                    break format!("parse error: {reason}");
                }
                match conn.uncork() {
                    Err(SendError::Full(why)) => break why.to_string(),
                    Err(SendError::Closed) => break "transport error".to_string(),
                    Ok(()) => {}
                }
                if s.is_closed() {
                    return;
                }
            };
            self.close(s, &reason);
        }

        // ── Server-Sent Events (PROTOCOL.md §3).

        fn sse_resume(
            &self,
            req: &Request,
            c: &mut Conn,
            cors: &[(&str, &str)],
            last: &str,
        ) -> Next {
            let parsed = last
                .rsplit_once(':')
                .and_then(|(sid, n)| Some((sid.to_string(), n.parse::<u64>().ok()?)));
            let Some((sid, n)) = parsed else {
                return self.error(c, cors, 3, false);
            };
            let Some(s) = self.get(&sid) else {
                return self.error(c, cors, 1, false);
            };
            if s.transport() != Transport::Sse || req.method() != "GET" {
                return self.error(c, cors, 3, false);
            }
            log!(DEBUG, "resume {} after event {n}", s.sid);
            self.sse_stream(&s, c, cors, Some(n))
        }

        /// Streams the session's packets as SSE events until the session closes, upgrades,
        /// a newer stream replaces this one, or a write fails (then the heartbeat decides).
        fn sse_stream(
            &self,
            s: &Arc<Session>,
            c: &mut Conn,
            headers: &[(&str, &str)],
            resume_after: Option<u64>,
        ) -> Next {
            let mut h = headers.to_vec();
            h.extend_from_slice(&[
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-cache"),
                ("X-Accel-Buffering", "no"),
            ]);
            let tcp = c.tcp;
            c.read_timeout.set(tcp, None);
            let _ = tcp.set_write_timeout(Some(self.cfg.ping_timeout));
            let keepalive = (self.cfg.ping_interval / 2).min(Duration::from_secs(15));
            let (me, mut batch) = {
                let mut st = lock(&s.state);
                st.sse.stream += 1;
                let mut batch = Vec::new();
                if let Some(after) = resume_after {
                    let oldest = st.sse.sent.front().map_or(st.sse.next_id, |(id, _)| *id);
                    if after + 1 < oldest || after + 1 > st.sse.next_id {
                        drop(st);
                        self.close(s, "SSE resume outside the replay window");
                        return self.error(c, &[], 1, false);
                    }
                    batch.extend(st.sse.sent.iter().filter(|(id, _)| *id > after).cloned());
                }
                s.wake_waiters(&st);
                (st.sse.stream, batch)
            };
            let mut out = http::head(200, &h, None, false);
            loop {
                for (id, p) in &batch {
                    write_event(&mut out, &s.sid, *id, p);
                }
                if (&**tcp).write_all(&out).is_err() {
                    log!(
                        DEBUG,
                        "SSE stream of {} dropped; its packets wait for a resume",
                        s.sid
                    );
                    return Next::Close;
                }
                out.clear();
                let mut st = lock(&s.state);
                loop {
                    if st.sse.stream != me || st.transport != Transport::Sse {
                        return Next::Close; // replaced by a newer stream, or upgraded
                    }
                    if st.has_deliverable() || st.closed.is_some() {
                        break;
                    }
                    let (guard, timed_out) = s.wait(st, keepalive);
                    st = guard;
                    if timed_out && !st.has_deliverable() && st.closed.is_none() {
                        out.extend_from_slice(b":\n\n"); // keep-alive comment; a dead peer fails it
                        break;
                    }
                }
                let mut drained = st.take_deliverable();
                let closed = st.closed.is_some();
                if closed {
                    drained.push(shared(&CLOSE, "1"));
                }
                batch.clear();
                let bounds = (self.cfg.sse_replay, self.cfg.sse_replay_bytes);
                for p in drained {
                    batch.push((st.sse.keep(&p, bounds), p));
                }
                drop(st);
                if closed {
                    for (id, p) in &batch {
                        write_event(&mut out, &s.sid, *id, p);
                    }
                    let _ = (&**tcp).write_all(&out);
                    return Next::Close;
                }
            }
        }

        // ── The one close path.

        /// Ends a session, once, whatever the cause: client close, ping timeout, transport
        /// error, oversize, protocol error, server shutdown.
        pub fn close(&self, s: &Arc<Session>, reason: &str) {
            let (ws, transport, owes_noop) = {
                let mut st = lock(&s.state);
                if st.closed.is_some() {
                    return;
                }
                st.closed = Some(reason.to_string());
                // Under the state lock, which a GET holds while it checks for a close: a GET
                // either waits (and is released below) or finds the close and clears this.
                let owes_noop = reason == CLIENT_CLOSE
                    && st.transport == Transport::Polling
                    && !st.poll_waiting
                    && self.owe_close_noop(&s.sid);
                s.wake_waiters(&st);
                (st.ws.take(), st.transport, owes_noop)
            };
            lock(&self.sessions).remove(&s.sid);
            if owes_noop {
                let (me, sid) = (self.me.clone(), s.sid.clone());
                self.timers.after(self.cfg.header_timeout, move || {
                    if let Some(engine) = me.upgrade() {
                        let mut owed = lock(&engine.close_noops);
                        owed.remove(&sid);
                        // Once a flood of closes has all expired, give back the room it took.
                        if owed.is_empty() {
                            owed.shrink_to_fit();
                        }
                    }
                });
            }
            if let Some(ws) = ws {
                // EIO: a close packet, then the WebSocket close frame.
                let mut last = shared(&CLOSE, "1").ws_frame().to_vec();
                last.extend_from_slice(&close_frame(1000, ""));
                ws.close(Some(&last));
            }
            self.handler.close(s, reason);
            log!(
                INFO,
                "close {} {} from {}: {reason}",
                s.sid,
                transport.name(),
                s.peer
            );
        }

        /// Records that `sid`'s next GET is owed a noop; false when `--max-sessions` such
        /// records are kept already (that GET then gets the 400 of an unknown session).
        fn owe_close_noop(&self, sid: &str) -> bool {
            let mut owed = lock(&self.close_noops);
            owed.len() < self.cfg.max_sessions && owed.insert(sid.to_string())
        }
    }

    fn write_event(out: &mut Vec<u8>, sid: &str, id: u64, p: &Out) {
        out.extend_from_slice(format!("id: {sid}:{id}\n").as_bytes());
        let mut record = Vec::new();
        p.write_record(&mut record);
        for line in record.split(|b| *b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
    }

    /// True when the peer has closed its side (EOF or error) — checked without reading data.
    fn peer_gone(tcp: &TcpStream) -> bool {
        match http::recv(tcp, &mut [0u8; 1], libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_sse_replay_log_is_bounded_in_packets_and_in_bytes() {
            let mut log = SseLog::default();
            let ids: Vec<u64> = (0..5)
                .map(|_| log.keep(&Out::text("4abc"), (3, 100)))
                .collect();
            assert_eq!(ids, [0, 1, 2, 3, 4], "ids count on past what is forgotten");
            let kept = |log: &SseLog| log.sent.iter().map(|(id, _)| *id).collect::<Vec<_>>();
            assert_eq!((kept(&log), log.bytes), (vec![2, 3, 4], 12));
            // One large packet pushes out as many older ones as its size needs.
            log.keep(&Out::text(&"4".repeat(95)), (3, 100));
            assert_eq!((kept(&log), log.bytes), (vec![4, 5], 99));
            // One over the byte bound on its own is not kept at all.
            log.keep(&Out::text(&"4".repeat(101)), (3, 100));
            assert_eq!((kept(&log), log.bytes, log.next_id), (vec![], 0, 7));
        }

        #[test]
        fn a_long_burst_under_the_cork_goes_out_in_batches_not_against_the_queue_bound() {
            use std::net::{TcpListener, TcpStream};
            let args = ["--max-queue-packets", "10"].map(String::from).to_vec();
            let cfg = crate::config::parse(args, |_| None).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let conn = WsConn::new(Arc::new(server), &cfg);
            conn.cork();
            let mut want = Vec::new();
            for i in 0..100 {
                let out = Out::text(&format!("4{i}"));
                want.extend_from_slice(out.ws_frame());
                assert_eq!(conn.send(Chunk::Out(out)), Ok(()), "packet {i}");
            }
            assert_eq!(conn.uncork(), Ok(()));
            let mut got = vec![0; want.len()];
            client.read_exact(&mut got).unwrap();
            assert_eq!(got, want);
        }

        #[test]
        fn gathered_chunks_go_out_whole_in_order_from_their_offsets() {
            use std::os::unix::net::UnixStream;
            let (a, mut b) = UnixStream::pair().unwrap();
            let mut chunks: VecDeque<(Chunk, usize)> = VecDeque::new();
            chunks.push_back((Chunk::Raw(Arc::from(&b"xxhead "[..])), 2));
            let mut want = b"head ".to_vec();
            for i in 0..2 * MAX_IOV {
                let out = Out::text(&format!("4{i}"));
                want.extend_from_slice(out.ws_frame());
                chunks.push_back((Chunk::Out(out), 0));
            }
            let n = sendmsg_nonblocking(a.as_raw_fd(), &chunks).unwrap();
            assert_eq!(n, want.len());
            let mut got = vec![0; want.len()];
            b.read_exact(&mut got).unwrap();
            assert_eq!(got, want);
        }

        /// A handler that does nothing, for tests of the engine alone.
        struct Quiet;
        impl Handler for Quiet {
            fn open(&self, _: &Arc<Session>) {}
            fn message(&self, _: &Arc<Session>, _: Message) -> Result<(), String> {
                Ok(())
            }
            fn close(&self, _: &Arc<Session>, _: &str) {}
        }

        #[test]
        fn a_queued_packet_wakes_a_waiting_poll_and_the_waiter_count_returns_to_zero() {
            let cfg = Arc::new(crate::config::parse(Vec::new(), |_| None).unwrap());
            let engine = Engine::new(
                cfg.clone(),
                Timers::start(cfg.thread_stack),
                Arc::new(Quiet),
                None,
            );
            let s = engine.create(Transport::Polling, (None, false), "test", None);
            let waiter = {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut st = lock(&s.state);
                    loop {
                        if st.has_deliverable() {
                            return (false, st.take_deliverable().len(), st.waiters);
                        }
                        // Only a notify ends this wait before the timeout, which then
                        // fails the test rather than hanging it.
                        let (guard, timed_out) = s.wait(st, Duration::from_secs(20));
                        st = guard;
                        if timed_out {
                            return (true, 0, st.waiters);
                        }
                    }
                })
            };
            // The waiter counts itself under the lock it then gives up in `wait`, so once the
            // count shows here it is waiting and the packet below must wake it.
            while lock(&s.state).waiters == 0 {
                std::thread::yield_now();
            }
            s.send_all(&[Out::text("4hello")]);
            let (timed_out, delivered, waiters_after) = waiter.join().unwrap();
            assert!(!timed_out);
            assert_eq!(delivered, 1);
            assert_eq!(waiters_after, 0);
        }

        #[test]
        fn a_request_after_the_pong_deadline_finds_the_session_ended_even_if_its_timer_is_late() {
            let args = ["--ping-timeout", "1"].map(String::from).to_vec();
            let cfg = Arc::new(crate::config::parse(args, |_| None).unwrap());
            let timers = Timers::start(64 * 1024);
            // The timers thread is kept busy, so the timer that would end the session for
            // its missing pong cannot run: only the request's own look at the deadline can.
            let (release, held) = std::sync::mpsc::channel::<()>();
            timers.at(Instant::now(), move || {
                let _ = held.recv();
            });
            let engine = Engine::new(cfg, timers, Arc::new(Quiet), None);
            let s = engine.create(Transport::Polling, (None, false), "test", None);
            engine.ping(&s, Instant::now());
            while !s.pong_overdue() {
                std::thread::yield_now();
            }
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let tcp = Arc::new(listener.accept().unwrap().0);
            let query = format!("EIO=4&transport=polling&sid={}", s.sid);
            let req = Request::new("GET", "/socket.io/", &query);
            let (mut leftover, mut read_timeout) = (Vec::new(), http::ReadTimeout::default());
            let mut conn = Conn {
                tcp: &tcp,
                peer: "test",
                peer_cpu: &crate::PeerCpu::new([127, 0, 0, 1].into(), false),
                leftover: &mut leftover,
                read_timeout: &mut read_timeout,
            };
            engine.serve(&req, &mut conn);
            let mut head = [0u8; 12];
            client.read_exact(&mut head).unwrap();
            assert_eq!(
                &head, b"HTTP/1.1 400",
                "not the queued ping: the session is over"
            );
            assert!(s.is_closed());
            assert!(engine.get(&s.sid).is_none());
            release.send(()).unwrap();
        }

        #[test]
        fn ids_are_random_v4_uuids_never_repeated() {
            let ids: Vec<uuid::Uuid> = (0..1000).map(|_| crate::random_uuid()).collect();
            for id in &ids {
                assert_eq!(id.get_version_num(), 4);
                assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            }
            let distinct: std::collections::HashSet<_> = ids.iter().collect();
            assert_eq!(distinct.len(), ids.len());
            assert_eq!(new_id().len(), 32);
        }

        /// Run in a child process (the fault ends the process): the far end of a connection
        /// thread's stack, where an overflow lands first, must fault, not be written.
        #[test]
        fn the_far_end_of_a_connection_threads_stack_is_a_guard_page() {
            use std::os::unix::process::ExitStatusExt;
            const CHILD: &str = "TINYSIO_TEST_GUARD";
            if std::env::var_os(CHILD).is_some() {
                let (tx, rx) = std::sync::mpsc::channel();
                let probe = Box::new(move || {
                    // SAFETY: a read of this thread's own attributes; the write below is
                    // meant to fault (and, without a guard, lands in this thread's own unused
                    // stack, which is then the failure reported).
                    unsafe {
                        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
                        libc::pthread_getattr_np(libc::pthread_self(), &mut attr);
                        let (mut low, mut size) = (std::ptr::null_mut(), 0);
                        libc::pthread_attr_getstack(&attr, &mut low, &mut size);
                        std::ptr::write_volatile(low.cast::<u8>(), 1);
                    }
                    tx.send(()).unwrap();
                });
                crate::spawn_detached(64 * 1024, probe).unwrap();
                rx.recv().unwrap();
                std::process::exit(0); // the write went through: no guard
            }
            let me = std::env::current_exe().unwrap();
            let name = "engine::tests::the_far_end_of_a_connection_threads_stack_is_a_guard_page";
            let status = std::process::Command::new(me)
                .args(["--exact", name])
                .env(CHILD, "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}");
        }

        #[test]
        fn sse_events_carry_ids_and_one_data_line_per_line() {
            let mut out = Vec::new();
            write_event(&mut out, "abc", 3, &Out::text("4a\nb"));
            write_event(&mut out, "abc", 4, &Out::binary(&[1, 2, 3, 4]));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "id: abc:3\ndata: 4a\ndata: b\n\nid: abc:4\ndata: bAQIDBA==\n\n"
            );
        }

        #[test]
        fn timers_fire_in_deadline_order() {
            let timers = Timers::start(64 * 1024);
            let (tx, rx) = std::sync::mpsc::channel();
            for (delay, tag) in [(30, 3), (10, 1), (20, 2)] {
                let tx = tx.clone();
                timers.after(Duration::from_millis(delay), move || tx.send(tag).unwrap());
            }
            let got: Vec<i32> = (0..3)
                .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
                .collect();
            assert_eq!(got, vec![1, 2, 3]);
        }

        #[test]
        fn error_table_matches_the_protocol() {
            let table: Vec<&str> = (0..6).map(error_message).collect();
            assert_eq!(
                table,
                [
                    "Transport unknown",
                    "Session ID unknown",
                    "Bad handshake method",
                    "Bad request",
                    "Forbidden",
                    "Unsupported protocol version"
                ]
            );
        }
    }
}

// ───────────────────────────────────────────────────────────────────────────────────────────
mod hub {
    //! Socket.IO on top of Engine.IO sessions: namespaces and their handlers, sockets, rooms,
    //! acks both ways, broadcast. Handlers run on the thread that read the packet; no lock of
    //! this module is held while a handler runs or while anything is sent.
    use crate::config::Config;
    use crate::eio::Out;
    use crate::engine::{Handler, Message, Session, Timers};
    use crate::sio::{self, Kind};
    use crate::{lock, log, new_id, prefetch, SharedCpuEscape, DEBUG};
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use std::hash::{BuildHasherDefault, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, RwLock};
    use std::time::Duration;

    /// Event arguments: JSON values, with binary attachments beside them. A binary argument is
    /// the placeholder `{"_placeholder":true,"num":i}` in `values` and its bytes in `bins[i]`,
    /// exactly as on the wire, so an echo re-sends them without a copy into a tree.
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Args {
        pub values: Vec<Value>,
        pub bins: Vec<Vec<u8>>,
    }

    impl Args {
        pub fn new(values: Vec<Value>) -> Args {
            Args {
                values,
                bins: Vec::new(),
            }
        }
        pub fn one(value: Value) -> Args {
            Args::new(vec![value])
        }
        pub fn str(&self, i: usize) -> Option<&str> {
            self.values.get(i).and_then(Value::as_str)
        }
    }

    /// The Engine.IO messages of one Socket.IO packet, in order: the text packet, then one
    /// binary message per attachment. Most packets have none, and then no list is allocated.
    enum Encoded {
        One([Arc<Out>; 1]),
        Many(Vec<Arc<Out>>),
    }

    impl std::ops::Deref for Encoded {
        type Target = [Arc<Out>];
        fn deref(&self) -> &[Arc<Out>] {
            match self {
                Encoded::One(one) => one,
                Encoded::Many(list) => list,
            }
        }
    }

    /// Encodes an EVENT (with its name) or an ACK once, as the Engine.IO messages to send.
    fn encode(kind: Kind, nsp: &str, id: Option<u64>, event: Option<&str>, args: &Args) -> Encoded {
        let kind = match (kind, args.bins.is_empty()) {
            (Kind::Event, false) => Kind::BinaryEvent,
            (Kind::Ack, false) => Kind::BinaryAck,
            (k, _) => k,
        };
        let text = Out::text_with(|b| {
            b.push(b'4');
            sio::write_head(b, kind, args.bins.len(), nsp, id);
            b.push(b'[');
            // Writing JSON into a Vec cannot fail.
            if let Some(name) = event {
                let _ = serde_json::to_writer(&mut *b, name);
            }
            for (i, v) in args.values.iter().enumerate() {
                if i > 0 || event.is_some() {
                    b.push(b',');
                }
                let _ = serde_json::to_writer(&mut *b, v);
            }
            b.push(b']');
        });
        if args.bins.is_empty() {
            return Encoded::One([text]);
        }
        Encoded::Many(
            std::iter::once(text)
                .chain(args.bins.iter().map(|bin| Out::binary(bin)))
                .collect(),
        )
    }

    fn control(kind: Kind, nsp: &str, data: Option<&Value>) -> Arc<Out> {
        Out::text_with(|b| {
            b.push(b'4');
            sio::write_head(b, kind, 0, nsp, None);
            if let Some(d) = data {
                let _ = serde_json::to_writer(&mut *b, d);
            }
        })
    }

    /// A map keyed by names the server fixes at start (namespaces, events): a client can look
    /// a key up but never insert one of its choosing, so SipHash's defence against chosen
    /// collisions buys nothing here, and it was a twentieth of the work per message (callgrind).
    type Fixed<V> = HashMap<String, V, BuildHasherDefault<Fnv>>;

    /// FNV-1a.
    struct Fnv(u64);
    impl Default for Fnv {
        fn default() -> Fnv {
            Fnv(0xcbf2_9ce4_8422_2325)
        }
    }
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    pub type EventFn = Box<dyn Fn(&Arc<Socket>, Args, Option<Ack>) + Send + Sync>;
    pub type SocketFn = Box<dyn Fn(&Arc<Socket>) + Send + Sync>;
    pub type DisconnectFn = Box<dyn Fn(&Arc<Socket>, &str) + Send + Sync>;
    type AckFn = Box<dyn FnOnce(Result<Args, AckError>) + Send>;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AckError {
        Timeout,
        Disconnected,
        /// `--max-pending-acks` of this socket's acks were still awaited: nothing was sent.
        TooMany,
    }

    /// A namespace: its handlers (fixed before the server starts, so none is missing when a
    /// CONNECT is confirmed), its sockets and its rooms.
    pub struct Namespace {
        pub name: String,
        on_connect: Option<SocketFn>,
        on_disconnect: Option<DisconnectFn>,
        events: Fixed<EventFn>,
        sockets: RwLock<HashMap<String, Arc<Socket>>>,
        /// Copy-on-write member lists: a broadcast clones one `Arc`, never the list.
        rooms: Mutex<HashMap<String, Arc<Vec<Arc<Socket>>>>>,
    }

    impl Namespace {
        pub fn new(name: &str) -> Namespace {
            Namespace {
                name: name.to_string(),
                on_connect: None,
                on_disconnect: None,
                events: Fixed::default(),
                sockets: RwLock::default(),
                rooms: Mutex::default(),
            }
        }
        pub fn on_connect(&mut self, f: impl Fn(&Arc<Socket>) + Send + Sync + 'static) {
            self.on_connect = Some(Box::new(f));
        }
        pub fn on_disconnect(&mut self, f: impl Fn(&Arc<Socket>, &str) + Send + Sync + 'static) {
            self.on_disconnect = Some(Box::new(f));
        }
        pub fn on(
            &mut self,
            event: &str,
            f: impl Fn(&Arc<Socket>, Args, Option<Ack>) + Send + Sync + 'static,
        ) {
            self.events.insert(event.to_string(), Box::new(f));
        }

        /// A broadcast to a room's members.
        pub fn to(&self, room: &str) -> Broadcast<'_> {
            Broadcast {
                nsp: self,
                room: Some(room.to_string()),
                except: None,
            }
        }
        /// The sockets connected to this namespace now.
        pub fn sockets(&self) -> Vec<Arc<Socket>> {
            self.sockets
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect()
        }
        /// A broadcast to every socket of the namespace.
        pub fn all(&self) -> Broadcast<'_> {
            Broadcast {
                nsp: self,
                room: None,
                except: None,
            }
        }
        pub fn members(&self, room: &str) -> Arc<Vec<Arc<Socket>>> {
            lock(&self.rooms).get(room).cloned().unwrap_or_default()
        }

        fn join_room(&self, room: &str, sock: &Arc<Socket>) {
            let mut rooms = lock(&self.rooms);
            let list = rooms.entry(room.to_string()).or_default();
            let mut members = Vec::with_capacity(list.len() + 1);
            members.extend(list.iter().cloned());
            members.push(sock.clone());
            *list = Arc::new(members);
        }

        fn leave_room(&self, room: &str, sock: &Socket) {
            let mut rooms = lock(&self.rooms);
            let Some(list) = rooms.get_mut(room) else {
                return;
            };
            let members: Vec<Arc<Socket>> =
                list.iter().filter(|m| m.id != sock.id).cloned().collect();
            if members.is_empty() {
                rooms.remove(room);
            } else {
                *list = Arc::new(members);
            }
        }

        /// The socket leaves the namespace: out of its rooms, its pending acks failed, then the
        /// app's disconnect handler (which may still read the rooms it was in).
        fn remove(&self, sock: &Arc<Socket>, reason: &str) {
            let was = self
                .sockets
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&sock.id);
            if was.is_none() {
                return;
            }
            for room in sock.rooms() {
                self.leave_room(&room, sock);
            }
            let pending: Vec<AckFn> = lock(&sock.acks).drain().map(|(_, f)| f).collect();
            for f in pending {
                f(Err(AckError::Disconnected));
            }
            if let Some(f) = &self.on_disconnect {
                f(sock, reason);
            }
        }
    }

    pub struct Broadcast<'a> {
        nsp: &'a Namespace,
        room: Option<String>,
        except: Option<String>,
    }

    impl Broadcast<'_> {
        pub fn except(mut self, socket_id: &str) -> Self {
            self.except = Some(socket_id.to_string());
            self
        }
        /// Encodes once, collects the receivers, drops every lock, then sends. Returns how
        /// many sockets it was sent to.
        pub fn emit(self, event: &str, args: &Args) -> usize {
            let packets = encode(Kind::Event, &self.nsp.name, None, Some(event), args);
            let targets: Arc<Vec<Arc<Socket>>> = match &self.room {
                Some(room) => self.nsp.members(room),
                None => Arc::new(self.nsp.sockets()),
            };
            // A fan-out this long takes milliseconds: worth leaving a CPU it would share.
            let mut escape = (targets.len() >= 256).then(SharedCpuEscape::start);
            let mut sent = 0;
            for (i, sock) in targets.iter().enumerate() {
                prefetch_ahead(&targets, i);
                if self.except.as_deref() == Some(&sock.id) {
                    continue;
                }
                sock.session.send_all(&packets);
                sent += 1;
                if let (16, Some(escape)) = (sent, &mut escape) {
                    escape.check();
                }
            }
            sent
        }
    }

    /// A fan-out waits on memory more than on anything of its own: every member's `Socket`
    /// and `Session` are cold, and each miss (with its page walk, in a VM) stalls the loop
    /// before the member's `send`. Asking for them a few members ahead lets those misses
    /// run while the kernel sends to the members before.
    fn prefetch_ahead(targets: &[Arc<Socket>], i: usize) {
        // The `Socket` four members on: only its address is read here.
        if let Some(s) = targets.get(i + 4) {
            prefetch(&raw const s.session);
        }
        // The session two members on, through the `Socket` asked for two members ago.
        if let Some(s) = targets.get(i + 2) {
            s.session.prefetch();
        }
    }

    /// One client's membership of one namespace.
    pub struct Socket {
        pub id: String,
        pub nsp: Arc<Namespace>,
        pub session: Arc<Session>,
        /// The app session (PROTOCOL.md §4): the cookie the client sent, else the CONNECT
        /// payload's `session`, else the cookie just issued.
        pub user: String,
        /// Whether the client showed that session itself (cookie or payload).
        pub user_given: bool,
        /// The CONNECT payload (`{}` when none).
        pub auth: Value,
        rooms: Mutex<Vec<String>>,
        acks: Mutex<HashMap<u64, AckFn>>,
        next_ack: AtomicU64,
        /// `--max-pending-acks`.
        max_acks: usize,
        /// `--max-rooms`.
        max_rooms: usize,
        timers: Arc<Timers>,
    }

    impl Socket {
        pub fn emit(&self, event: &str, args: &Args) {
            self.session.send_all(&encode(
                Kind::Event,
                &self.nsp.name,
                None,
                Some(event),
                args,
            ));
        }

        /// Emits and asks the client for an ack; `done` gets it, or `Timeout` / `Disconnected`.
        pub fn emit_with_ack(
            self: &Arc<Self>,
            event: &str,
            args: &Args,
            timeout: Duration,
            done: impl FnOnce(Result<Args, AckError>) + Send + 'static,
        ) {
            let mut acks = lock(&self.acks);
            if acks.len() >= self.max_acks {
                drop(acks);
                return done(Err(AckError::TooMany));
            }
            let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
            acks.insert(id, Box::new(done));
            drop(acks);
            let me = Arc::downgrade(self);
            self.timers.after(timeout, move || {
                let Some(me) = me.upgrade() else { return };
                let f = lock(&me.acks).remove(&id);
                if let Some(f) = f {
                    f(Err(AckError::Timeout));
                }
            });
            self.session.send_all(&encode(
                Kind::Event,
                &self.nsp.name,
                Some(id),
                Some(event),
                args,
            ));
        }

        /// Joins a room: `Ok(false)` if already a member; refused, with the reason, when the
        /// socket is in `--max-rooms` rooms already.
        pub fn join(self: &Arc<Self>, room: &str) -> Result<bool, String> {
            let mut rooms = lock(&self.rooms);
            if rooms.iter().any(|r| r == room) {
                return Ok(false);
            }
            if rooms.len() >= self.max_rooms {
                return Err(format!("in {} rooms already; leave one first", rooms.len()));
            }
            rooms.push(room.to_string());
            drop(rooms);
            self.nsp.join_room(room, self);
            Ok(true)
        }

        /// Leaves a room; false if not a member.
        pub fn leave(&self, room: &str) -> bool {
            let mut rooms = lock(&self.rooms);
            let Some(at) = rooms.iter().position(|r| r == room) else {
                return false;
            };
            rooms.remove(at);
            drop(rooms);
            self.nsp.leave_room(room, self);
            true
        }

        pub fn rooms(&self) -> Vec<String> {
            lock(&self.rooms).clone()
        }

        pub fn in_room(&self, room: &str) -> bool {
            lock(&self.rooms).iter().any(|r| r == room)
        }

        /// Server-side disconnect from this namespace: DISCONNECT to the client, then leave.
        pub fn disconnect(self: &Arc<Self>) {
            self.session
                .send_all(&[control(Kind::Disconnect, &self.nsp.name, None)]);
            if let Some(c) = client(&self.session) {
                lock(&c.sockets).remove(&self.nsp.name);
            }
            self.nsp.remove(self, "server namespace disconnect");
        }
    }

    /// The answer to a client's ack request; sending it consumes it (one answer per id).
    pub struct Ack {
        socket: Arc<Socket>,
        id: u64,
    }
    impl Ack {
        pub fn send(self, args: &Args) {
            self.socket.session.send_all(&encode(
                Kind::Ack,
                &self.socket.nsp.name,
                Some(self.id),
                None,
                args,
            ));
        }
    }

    /// Per Engine.IO session: its sockets by namespace, and a binary packet being assembled.
    #[derive(Default)]
    struct Client {
        sockets: Mutex<Fixed<Arc<Socket>>>,
        partial: Mutex<Option<(sio::Packet, Vec<Vec<u8>>)>>,
        /// Counts the times the session was left with no namespace (the handshake is the
        /// first): a connect timeout applies only to the time it was armed for.
        emptied: AtomicU64,
    }

    fn client(s: &Session) -> Option<&Client> {
        s.ext.get()?.downcast_ref::<Client>()
    }

    pub struct Hub {
        namespaces: Fixed<Arc<Namespace>>,
        cfg: Arc<Config>,
        timers: Arc<Timers>,
    }

    impl Hub {
        pub fn new(cfg: Arc<Config>, timers: Arc<Timers>, namespaces: Vec<Namespace>) -> Hub {
            let namespaces = namespaces
                .into_iter()
                .map(|n| (n.name.clone(), Arc::new(n)))
                .collect();
            Hub {
                namespaces,
                cfg,
                timers,
            }
        }

        /// SIO5: a client must CONNECT a namespace within the connect timeout, after the
        /// handshake and again after leaving its last one (What we chose, README).
        fn arm_connect_timeout(&self, s: &Arc<Session>, c: &Client) {
            let armed = c.emptied.fetch_add(1, Ordering::Relaxed) + 1;
            let session = s.handle();
            self.timers.after(self.cfg.connect_timeout, move || {
                let Some(s) = session.get() else { return };
                let Some(c) = client(&s) else { return };
                if c.emptied.load(Ordering::Relaxed) == armed && lock(&c.sockets).is_empty() {
                    s.close("connect timeout (no namespace joined)");
                }
            });
        }

        pub fn namespace(&self, name: &str) -> Option<&Arc<Namespace>> {
            self.namespaces.get(name)
        }

        fn connect(&self, s: &Arc<Session>, c: &Client, p: sio::Packet) -> Result<(), String> {
            let refuse = |message: &str| {
                s.send_all(&[control(
                    Kind::ConnectError,
                    &p.nsp,
                    Some(&json!({ "message": message })),
                )]);
                Ok(())
            };
            let Some(nsp) = self.namespaces.get(&p.nsp) else {
                return refuse("Invalid namespace");
            };
            let mut sockets = lock(&c.sockets);
            if let Some(existing) = sockets.get(&p.nsp) {
                // A repeated CONNECT: confirm the socket it already has.
                s.send_all(&[control(
                    Kind::Connect,
                    &p.nsp,
                    Some(&json!({ "sid": existing.id })),
                )]);
                return Ok(());
            }
            if sockets.len() >= self.cfg.max_namespaces {
                drop(sockets);
                return refuse("Too many namespaces on one connection");
            }
            let auth = p.data.unwrap_or_else(|| json!({}));
            let from_payload = auth
                .get("session")
                .and_then(Value::as_str)
                .filter(|v| uuid::Uuid::parse_str(v).is_ok());
            let (user, user_given) = match (&s.cookie, s.cookie_given, from_payload) {
                (Some(cookie), true, _) => (cookie.clone(), true),
                (_, _, Some(v)) => (v.to_string(), true),
                (Some(cookie), false, None) => (cookie.clone(), false),
                (None, _, None) => (crate::random_uuid().to_string(), false),
            };
            let sock = Arc::new(Socket {
                id: new_id(),
                nsp: nsp.clone(),
                session: s.clone(),
                user,
                user_given,
                auth,
                rooms: Mutex::default(),
                acks: Mutex::default(),
                // Ids count from 1, as the official suite expects of a first ack.
                next_ack: AtomicU64::new(1),
                max_acks: self.cfg.max_pending_acks,
                max_rooms: self.cfg.max_rooms,
                timers: self.timers.clone(),
            });
            let first = sockets.is_empty();
            sockets.insert(p.nsp.clone(), sock.clone());
            drop(sockets);
            if first {
                s.answer_polls_at_once(false);
            }
            nsp.sockets
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(sock.id.clone(), sock.clone());
            s.send_all(&[control(
                Kind::Connect,
                &p.nsp,
                Some(&json!({ "sid": sock.id })),
            )]);
            if let Some(f) = &nsp.on_connect {
                f(&sock);
            }
            Ok(())
        }

        fn dispatch(
            &self,
            s: &Arc<Session>,
            c: &Client,
            p: sio::Packet,
            bins: Vec<Vec<u8>>,
        ) -> Result<(), String> {
            if p.kind == Kind::Connect {
                return self.connect(s, c, p);
            }
            let sock = lock(&c.sockets).get(&p.nsp).cloned();
            let Some(sock) = sock else {
                // A packet racing a DISCONNECT, or for a namespace never joined: nothing to do.
                log!(
                    DEBUG,
                    "{}: packet for unconnected namespace {} ignored",
                    s.sid,
                    p.nsp
                );
                return Ok(());
            };
            match p.kind {
                Kind::Disconnect => {
                    let mut sockets = lock(&c.sockets);
                    sockets.remove(&p.nsp);
                    let none_left = sockets.is_empty();
                    drop(sockets);
                    sock.nsp.remove(&sock, "client namespace disconnect");
                    if none_left {
                        s.answer_polls_at_once(true);
                        // A CONNECT on another request may have come in between.
                        if !lock(&c.sockets).is_empty() {
                            s.answer_polls_at_once(false);
                        }
                        self.arm_connect_timeout(s, c);
                    }
                }
                Kind::Event | Kind::BinaryEvent => {
                    let Some(Value::Array(mut values)) = p.data else {
                        return Err("event without data".into());
                    };
                    let name = match values.remove(0) {
                        Value::String(name) => name,
                        _ => return Err("event name is not a string".into()),
                    };
                    let ack = p.id.map(|id| Ack {
                        socket: sock.clone(),
                        id,
                    });
                    match sock.nsp.events.get(&name) {
                        Some(handler) => handler(&sock, Args { values, bins }, ack),
                        None => log!(DEBUG, "{}: no handler for event on {}", s.sid, p.nsp),
                    }
                }
                Kind::Ack | Kind::BinaryAck => {
                    let Some(Value::Array(values)) = p.data else {
                        return Err("ack without data".into());
                    };
                    let waiting = p.id.and_then(|id| lock(&sock.acks).remove(&id));
                    match waiting {
                        Some(f) => f(Ok(Args { values, bins })),
                        None => log!(DEBUG, "{}: ack for unknown or expired id", s.sid),
                    }
                }
                Kind::ConnectError | Kind::Connect => {
                    return Err("CONNECT_ERROR is sent by servers only".into())
                }
            }
            Ok(())
        }
    }

    impl Handler for Hub {
        fn open(&self, s: &Arc<Session>) {
            let _ = s.ext.set(Box::new(Client::default()));
            if let Some(c) = client(s) {
                self.arm_connect_timeout(s, c);
            }
        }

        fn message(&self, s: &Arc<Session>, msg: Message) -> Result<(), String> {
            let c = client(s).ok_or("session without Socket.IO state")?;
            match msg {
                Message::Text(text) => {
                    if lock(&c.partial).is_some() {
                        return Err("attachment count mismatch: text packet while binary attachments were due".into());
                    }
                    let limits = sio::Limits {
                        attachments: self.cfg.max_attachments,
                        depth: self.cfg.max_json_depth,
                    };
                    let p = sio::decode(text, limits).map_err(|e| e.to_string())?;
                    if p.attachments > 0 {
                        *lock(&c.partial) = Some((p, Vec::new()));
                        return Ok(());
                    }
                    self.dispatch(s, c, p, Vec::new())
                }
                Message::Binary(data) => {
                    let complete = {
                        let mut partial = lock(&c.partial);
                        let Some((p, bins)) = partial.as_mut() else {
                            return Err("attachment count mismatch: binary message with no packet expecting it".into());
                        };
                        // Each attachment may be up to --max-payload; what waits for the
                        // rest is bounded as a whole.
                        let held: usize = bins.iter().map(Vec::len).sum();
                        if held + data.len() > self.cfg.max_binary_bytes {
                            let max = self.cfg.max_binary_bytes;
                            return Err(format!(
                                "binary attachments over {max} bytes in one packet"
                            ));
                        }
                        bins.push(data.to_vec());
                        match bins.len() == p.attachments {
                            true => partial.take(),
                            false => None,
                        }
                    };
                    match complete {
                        Some((p, bins)) => self.dispatch(s, c, p, bins),
                        None => Ok(()),
                    }
                }
            }
        }

        fn close(&self, s: &Arc<Session>, reason: &str) {
            let Some(c) = client(s) else { return };
            let sockets: Vec<Arc<Socket>> = lock(&c.sockets).drain().map(|(_, v)| v).collect();
            for sock in sockets {
                sock.nsp.remove(&sock, reason);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn text(o: &Arc<Out>) -> String {
            String::from_utf8(o.payload().to_vec()).unwrap()
        }

        #[test]
        fn events_and_acks_encode_as_the_spec_shows() {
            let args = Args::new(vec![json!("room"), json!({"a": 1, "z": 2})]);
            let out = encode(Kind::Event, "/movies", None, Some("chat"), &args);
            assert_eq!(text(&out[0]), r#"42/movies,["chat","room",{"a":1,"z":2}]"#);
            let out = encode(Kind::Ack, "/", Some(7), None, &Args::one(json!("ok")));
            assert_eq!(text(&out[0]), r#"437["ok"]"#);
            let bin = Args {
                values: vec![json!({"file": sio::placeholder(0)})],
                bins: vec![vec![1, 2]],
            };
            let out = encode(Kind::Event, "/", None, Some("upload"), &bin);
            assert_eq!(
                text(&out[0]),
                r#"451-["upload",{"file":{"_placeholder":true,"num":0}}]"#
            );
            assert_eq!((out.len(), out[1].payload()), (2, &[1u8, 2][..]));
            let out = encode(Kind::Ack, "/admin", Some(15), None, &bin);
            assert_eq!(
                text(&out[0]),
                r#"461-/admin,15[{"file":{"_placeholder":true,"num":0}}]"#
            );
        }

        /// The CPUs the calling thread may run on.
        fn affinity() -> Vec<usize> {
            // SAFETY: the zeroed set is filled by the kernel; pid 0 is this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, size_of_val(&set), &mut set), 0);
                (0..libc::CPU_SETSIZE as usize)
                    .filter(|&c| libc::CPU_ISSET(c, &set))
                    .collect()
            }
        }

        #[test]
        fn a_fan_out_that_was_preempted_leaves_its_cpu_and_then_gets_its_cpus_back() {
            // A thread of its own: its affinity changes touch no other test.
            std::thread::spawn(|| {
                let before = affinity();
                // As if something had preempted the thread since the fan-out started.
                let mut escape = SharedCpuEscape {
                    switches: -1,
                    restore: None,
                };
                escape.check();
                let during = affinity();
                if before.len() < 2 {
                    assert_eq!(during, before, "one CPU: nowhere to go, nothing changed");
                } else {
                    let left: Vec<_> = before.iter().filter(|c| !during.contains(c)).collect();
                    assert_eq!(
                        left.len(),
                        1,
                        "exactly one CPU left: {before:?} -> {during:?}"
                    );
                    // SAFETY: no preconditions.
                    let now = unsafe { libc::sched_getcpu() } as usize;
                    assert_ne!(
                        now, *left[0],
                        "the thread no longer runs on the CPU it left"
                    );
                }
                drop(escape);
                assert_eq!(affinity(), before, "its CPUs given back");
                // Nothing preempted it since this start: the check leaves it where it is.
                let mut calm = SharedCpuEscape::start();
                let switches = calm.switches;
                calm.check();
                if crate::involuntary_switches() == switches {
                    assert_eq!(affinity(), before);
                }
            })
            .join()
            .unwrap();
        }

        #[test]
        fn a_thread_that_fans_out_gets_its_cpus_back_and_peer_cpu_leaves_it_be() {
            use std::io::{Read, Write};
            // A thread of its own: its affinity changes touch no other test.
            std::thread::spawn(|| {
                let all = affinity();
                if crate::process_cpus().is_none() {
                    return assert!(all.len() < 2, "one CPU: nowhere to go");
                }
                // Where `PeerCpu` leaves a thread on two CPUs: on one.
                pin(&[all[0]]);
                drop(SharedCpuEscape::start());
                assert_eq!(affinity(), all, "the process's CPUs, all of them");
                // A wake on its local peer's CPU, one that moves a thread that never fanned
                // out (`a_thread_woken_on_its_local_peers_cpu_leaves_that_cpu`), moves none.
                pin(&[all[0]]);
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let mut client =
                    std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                client.write_all(b"x").unwrap();
                let mut tcp = listener.accept().unwrap().0;
                tcp.read_exact(&mut [0u8; 1]).unwrap();
                assert_eq!(crate::incoming_cpu(&tcp), Some(all[0] as libc::c_int));
                let mut watch = crate::PeerCpu::new([127, 0, 0, 1].into(), true);
                (0..40).for_each(|_| watch.woke(&tcp, std::time::Instant::now()));
                assert_eq!(affinity(), [all[0]]);
            })
            .join()
            .unwrap();
        }

        /// Lets the calling thread run on `cpus` only.
        fn pin(cpus: &[usize]) {
            // SAFETY: the zeroed set is filled here; pid 0 is this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                cpus.iter().for_each(|&c| libc::CPU_SET(c, &mut set));
                assert_eq!(libc::sched_setaffinity(0, size_of_val(&set), &set), 0);
            }
        }

        #[test]
        fn a_thread_woken_on_its_local_peers_cpu_leaves_that_cpu() {
            use std::io::{Read, Write};
            use std::net::TcpStream;
            // Threads of their own: their affinity changes touch no other test.
            std::thread::spawn(|| {
                let all = affinity();
                if crate::process_cpus().is_none() {
                    return assert!(all.len() < 2, "one CPU: nowhere to go");
                }
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let peer_cpu = all[0];
                // The peer sends from `peer_cpu`, and the reader reads there too, as the
                // kernel's sync wake-up would have put it.
                let send_one = move || {
                    std::thread::spawn(move || {
                        pin(&[peer_cpu]);
                        let mut client = TcpStream::connect(addr).unwrap();
                        client.write_all(b"x").unwrap();
                        client
                    })
                    .join()
                    .unwrap()
                };
                let read_one = |peer: std::net::IpAddr| {
                    pin(&[peer_cpu]);
                    let _client = send_one();
                    let mut tcp = listener.accept().unwrap().0;
                    tcp.read_exact(&mut [0u8; 1]).unwrap();
                    assert_eq!(crate::incoming_cpu(&tcp), Some(peer_cpu as libc::c_int));
                    let mut watch = crate::PeerCpu::new(peer, true);
                    // Not during a connection's handshake: its first 7 wakes.
                    for _ in 0..7 {
                        watch.woke(&tcp, std::time::Instant::now());
                        assert_eq!(affinity(), [peer_cpu]);
                    }
                    watch.woke(&tcp, std::time::Instant::now());
                    affinity()
                };
                // A remote peer's packets come in where a network card puts them: stay.
                assert_eq!(read_one([192, 0, 2, 1].into()), [peer_cpu]);
                let left = read_one([127, 0, 0, 1].into());
                let rest: Vec<_> = all.iter().copied().filter(|&c| c != peer_cpu).collect();
                assert_eq!(left, rest, "all of the process's CPUs but the peer's");
                // SAFETY: no preconditions.
                let now = unsafe { libc::sched_getcpu() } as usize;
                assert_ne!(now, peer_cpu, "the thread moved off it at once");
                // Under the normal policy a woken thread can preempt its peer: no need.
                pin(&[peer_cpu]);
                let _client = send_one();
                let mut tcp = listener.accept().unwrap().0;
                tcp.read_exact(&mut [0u8; 1]).unwrap();
                let mut normal = crate::PeerCpu::new([127, 0, 0, 1].into(), false);
                (0..8).for_each(|_| normal.woke(&tcp, std::time::Instant::now()));
                assert_eq!(affinity(), [peer_cpu]);
                // A wake after a long wait, at its first look or a later one: it moves only
                // if its run delay grew by `RUNNABLE_TO_MOVE` since its last reading.
                if crate::run_delay().is_none() {
                    return eprintln!("no schedstat here: a long wait always moves");
                }
                let first_look = |delay| crate::PeerCpu {
                    on: true,
                    last: -1,
                    wakes: 7,
                    delay,
                };
                let long_ago = std::time::Instant::now() - std::time::Duration::from_millis(2);
                // Asleep: unless the machine kept this thread waiting between the reads.
                let stayed = (0..5).any(|_| {
                    pin(&[peer_cpu]);
                    let before = crate::run_delay().unwrap();
                    let mut watch = first_look(before);
                    watch.woke(&tcp, long_ago);
                    // A later look, on the same CPU, as well.
                    watch.woke(&tcp, long_ago);
                    let quiet = crate::run_delay().unwrap() - before < crate::RUNNABLE_TO_MOVE;
                    quiet && affinity() == [peer_cpu]
                });
                assert!(stayed, "woken from sleep, it stayed");
                // Runnable for twice that: it moves.
                let mut watch = first_look(
                    crate::run_delay()
                        .unwrap()
                        .wrapping_sub(2 * crate::RUNNABLE_TO_MOVE),
                );
                watch.woke(&tcp, long_ago);
                assert_eq!(affinity(), rest);
            })
            .join()
            .unwrap();
        }

        #[test]
        fn control_packets_are_exact() {
            assert_eq!(
                text(&control(
                    Kind::ConnectError,
                    "/random",
                    Some(&json!({"message": "Invalid namespace"}))
                )),
                r#"44/random,{"message":"Invalid namespace"}"#
            );
            assert_eq!(
                text(&control(Kind::Disconnect, "/movies", None)),
                "41/movies,"
            );
            assert_eq!(
                text(&control(Kind::Connect, "/", Some(&json!({"sid": "x"})))),
                r#"40{"sid":"x"}"#
            );
        }
    }
}

// ───────────────────────────────────────────────────────────────────────────────────────────
mod app {
    //! The services (PROTOCOL.md §4, §5): `/` the echo service, `/movies` the watch party from
    //! the Flask-SocketIO tutorial, `/custom` for the conformance suite, and the raw Engine.IO
    //! echo. Handlers only: they never touch a socket or hold a lock while emitting.
    use crate::config::Config;
    use crate::eio::Out;
    use crate::engine::{Handler, Message, Session};
    use crate::hub::{Ack, AckError, Args, Namespace, Socket};
    use crate::{lock, log, INFO};
    use serde_json::{json, Value};
    use std::collections::{BTreeMap, HashSet, VecDeque};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// The namespaces a server runs: `/` and `/movies`, or `/` and `/custom` when conformance.
    pub fn namespaces(cfg: &Config) -> Vec<Namespace> {
        lock(&USERS).max = cfg.max_users.max(1);
        let mut list = vec![echo()];
        if cfg.conformance {
            let mut custom = Namespace::new("/custom");
            custom.on_connect(|sock| sock.emit("auth", &Args::one(sock.auth.clone())));
            list.push(custom);
        } else {
            list.push(movies(cfg.max_online_names));
        }
        list
    }

    fn ack_with(ack: Option<Ack>, value: Value) {
        if let Some(ack) = ack {
            ack.send(&Args::one(value));
        }
    }

    /// How long `/`'s `emit-with-ack` waits for the client's ack.
    const ECHO_ACK_WAIT: Duration = Duration::from_secs(30);

    /// `/`: `auth` on connect; `message` → `message-back`; `message-with-ack` acked with its
    /// arguments. Test aids beyond §4: `emit-with-ack` asks for an ack and emits what it
    /// carried (the official suite's), `server-ack` asks the client for an ack
    /// (`[timeout_ms, ...args]`, the outcome comes back as `server-ack-result`),
    /// `disconnect-me` makes the server disconnect the socket, and `broadcast` sends its
    /// arguments to every other socket of `/`.
    fn echo() -> Namespace {
        let mut nsp = Namespace::new("/");
        nsp.on_connect(|sock| sock.emit("auth", &Args::one(sock.auth.clone())));
        nsp.on("message", |sock, args, _| sock.emit("message-back", &args));
        nsp.on("message-with-ack", |_, args, ack| {
            if let Some(ack) = ack {
                ack.send(&args);
            }
        });
        nsp.on("server-ack", |sock, mut args, _| {
            let timeout = args
                .values
                .first()
                .and_then(Value::as_u64)
                .unwrap_or(1000)
                .min(60_000);
            if !args.values.is_empty() {
                args.values.remove(0);
            }
            let me = sock.clone();
            sock.emit_with_ack(
                "ack-me",
                &args,
                Duration::from_millis(timeout),
                move |result| match result {
                    Ok(mut answer) => {
                        let values = std::mem::take(&mut answer.values);
                        answer.values = vec![json!({ "ok": true, "args": values })];
                        me.emit("server-ack-result", &answer);
                    }
                    Err(e) => {
                        let error = match e {
                            AckError::Timeout => "timeout",
                            AckError::Disconnected => "disconnected",
                            AckError::TooMany => "too many pending acks",
                        };
                        me.emit(
                            "server-ack-result",
                            &Args::one(json!({ "ok": false, "error": error })),
                        );
                    }
                },
            );
        });
        // The official suite's: emits its arguments back asking for an ack, then emits what the
        // ack carried (text or binary alike).
        nsp.on("emit-with-ack", |sock, args, _| {
            let me = sock.clone();
            sock.emit_with_ack("emit-with-ack", &args, ECHO_ACK_WAIT, move |result| {
                if let Ok(answer) = result {
                    me.emit("emit-with-ack", &answer);
                }
            });
        });
        nsp.on("disconnect-me", |sock, _, _| sock.disconnect());
        nsp.on("broadcast", |sock, args, _| {
            sock.nsp.all().except(&sock.id).emit("broadcast", &args);
        });
        nsp
    }

    // ── /movies

    #[derive(Clone, Debug)]
    struct User {
        username: String,
        /// When a socket of this session was last known to be on `/movies`.
        seen: Instant,
    }

    /// The tutorial's global user table, keyed by the session's uuid. Touched for microseconds;
    /// never held while anything is sent. Bounded (`--max-users`): anyone can open sessions,
    /// so past the bound the oldest session's entry goes (it must identify again).
    static USERS: Mutex<Users> = Mutex::new(Users::new(usize::MAX));

    struct Users {
        by_session: BTreeMap<String, User>,
        /// Sessions in the order they first identified; the front is evicted first.
        order: VecDeque<String>,
        /// The bound on entries (`--max-users`).
        max: usize,
    }

    impl Users {
        const fn new(max: usize) -> Users {
            Users {
                by_session: BTreeMap::new(),
                order: VecDeque::new(),
                max,
            }
        }
        fn get(&self, session: &str) -> Option<&User> {
            self.by_session.get(session)
        }
        /// Returns the name the session had before, if any.
        fn insert(&mut self, session: &str, user: User) -> Option<String> {
            let before = self.by_session.insert(session.to_string(), user);
            if before.is_none() {
                self.order.push_back(session.to_string());
            }
            while self.order.len() > self.max {
                if let Some(oldest) = self.order.pop_front() {
                    self.by_session.remove(&oldest);
                }
            }
            before.map(|u| u.username)
        }
        /// Keeps the entries of `live` sessions (and marks them seen now) and those seen
        /// within `ttl`.
        fn expire(&mut self, live: &HashSet<String>, now: Instant, ttl: Duration) {
            for (session, user) in self.by_session.iter_mut() {
                if live.contains(session) {
                    user.seen = now;
                }
            }
            self.by_session
                .retain(|_, user| now.duration_since(user.seen) < ttl);
            let by_session = &self.by_session;
            self.order
                .retain(|session| by_session.contains_key(session));
            if self.order.capacity() > 2 * self.order.len() + 1024 {
                self.order.shrink_to_fit();
            }
        }
    }

    /// Forgets the users whose session has had no socket on `/movies` for `ttl`
    /// (`--user-ttl`): a tab closed for good. Run by the server's housekeeping timer, so the
    /// table (and RSS) shrinks back after the crowd leaves.
    pub fn expire_users(movies: &Namespace, ttl: Duration) {
        let live: HashSet<String> = movies.sockets().iter().map(|s| s.user.clone()).collect();
        lock(&USERS).expire(&live, Instant::now(), ttl);
    }

    fn username(sock: &Socket) -> Option<String> {
        lock(&USERS).get(&sock.user).map(|u| u.username.clone())
    }

    /// A name or a room: trimmed; 1..=max characters; no control characters.
    fn clean(text: Option<&str>, what: &str, max: usize) -> Result<String, String> {
        clean_allowing(text, what, max, &[])
    }

    /// A chat line: as `clean`, but it may hold line breaks and tabs (`\r` too: a client that
    /// sends `\r\n` is not refused for it).
    fn clean_text(text: Option<&str>, max: usize) -> Result<String, String> {
        clean_allowing(text, "text", max, &['\n', '\r', '\t'])
    }

    fn clean_allowing(
        text: Option<&str>,
        what: &str,
        max: usize,
        allowed: &[char],
    ) -> Result<String, String> {
        let text = text.ok_or(format!("{what} must be a string"))?.trim();
        if text.is_empty() {
            return Err(format!("{what} is empty"));
        }
        if text.chars().count() > max {
            return Err(format!("{what} is longer than {max} characters"));
        }
        if text
            .chars()
            .any(|c| c.is_control() && !allowed.contains(&c))
        {
            return Err(format!("{what} holds control characters"));
        }
        Ok(text.to_string())
    }

    fn refuse(ack: Option<Ack>, error: String) {
        ack_with(ack, json!({ "ok": false, "error": error }));
    }

    /// Who is in a room: `{room, users, more}`. `users` holds the first `max` names in order
    /// (identified members only, each once), and `more`, present when names were left out, how
    /// many. Every change goes to every member, so the list is bounded as a chat line is: a
    /// room of n members would otherwise cost n lists of n names per join, and a client
    /// toggling join/leave could make each of its events megabytes.
    fn presence(nsp: &Namespace, room: &str, max: usize) -> serde_json::Map<String, Value> {
        let members = nsp.members(room);
        let users = lock(&USERS);
        let mut names: Vec<String> = members
            .iter()
            .filter_map(|m| users.get(&m.user).map(|u| u.username.clone()))
            .collect();
        drop(users);
        names.sort();
        names.dedup();
        let more = names.len().saturating_sub(max);
        names.truncate(max);
        let mut v = serde_json::Map::new();
        v.insert("room".into(), room.into());
        v.insert("users".into(), names.into());
        if more > 0 {
            v.insert("more".into(), more.into());
        }
        v
    }

    /// A presence list as an ack's answer: `"ok": true` first.
    fn acked(list: &serde_json::Map<String, Value>) -> Value {
        let mut v = serde_json::Map::new();
        v.insert("ok".into(), true.into());
        v.extend(list.clone());
        Value::Object(v)
    }

    /// Sends a room its presence list (`online`).
    fn announce(nsp: &Namespace, room: &str, list: serde_json::Map<String, Value>) {
        nsp.to(room).emit("online", &Args::one(Value::Object(list)));
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// `max_names`: `--max-online-names`, the bound of a presence list.
    fn movies(max_names: usize) -> Namespace {
        let mut nsp = Namespace::new("/movies");
        nsp.on_connect(|sock| {
            let mut state = json!({ "logged_in": false });
            if let Some(name) = username(sock) {
                state = json!({ "logged_in": true, "username": name });
            }
            if !sock.user_given {
                // A client that showed no session learns the one it got, to send next time.
                state["session"] = json!(sock.user);
            }
            sock.emit("on_connect", &Args::one(state));
        });
        nsp.on("identify", move |sock, args, ack| {
            let name = match clean(args.str(0), "username", 32) {
                Ok(name) => name,
                Err(e) => return refuse(ack, e),
            };
            let user = User {
                username: name.clone(),
                seen: Instant::now(),
            };
            let before = lock(&USERS).insert(&sock.user, user);
            log!(INFO, "Identify: {name}");
            ack_with(ack, json!({ "ok": true, "username": name }));
            // The rooms hear of a change only: a repeated identify costs them nothing. The
            // name is the session's, so the rooms of its other sockets (other tabs) hear too;
            // finding those is a pass over the namespace's sockets, paid per rename only.
            if before.as_deref() != Some(name.as_str()) {
                let mut rooms: Vec<String> = sock
                    .nsp
                    .sockets()
                    .iter()
                    .filter(|s| s.user == sock.user)
                    .flat_map(|s| s.rooms())
                    .collect();
                rooms.sort();
                rooms.dedup();
                for room in rooms {
                    announce(&sock.nsp, &room, presence(&sock.nsp, &room, max_names));
                }
            }
        });
        nsp.on("join", move |sock, args, ack| {
            let room = match clean(args.str(0), "room", 64) {
                Ok(room) => room,
                Err(e) => return refuse(ack, e),
            };
            let joined = match sock.join(&room) {
                Ok(joined) => joined,
                Err(e) => return refuse(ack, e),
            };
            // One list serves the joiner's ack and the room's announcement.
            let list = presence(&sock.nsp, &room, max_names);
            ack_with(ack, acked(&list));
            if joined {
                announce(&sock.nsp, &room, list);
            }
        });
        nsp.on("leave", move |sock, args, ack| {
            let room = match clean(args.str(0), "room", 64) {
                Ok(room) => room,
                Err(e) => return refuse(ack, e),
            };
            if !sock.leave(&room) {
                return refuse(ack, format!("not in room {room}"));
            }
            ack_with(ack, json!({ "ok": true, "room": room }));
            announce(&sock.nsp, &room, presence(&sock.nsp, &room, max_names));
        });
        nsp.on("chat", |sock, args, ack| {
            let Some(from) = username(sock) else {
                return refuse(ack, "identify first".into());
            };
            let room = match clean(args.str(0), "room", 64) {
                Ok(room) => room,
                Err(e) => return refuse(ack, e),
            };
            if !sock.in_room(&room) {
                return refuse(ack, format!("not in room {room}"));
            }
            let text = match clean_text(args.str(1), 1000) {
                Ok(text) => text,
                Err(e) => return refuse(ack, e),
            };
            let line =
                json!({ "room": room, "text": text, "from": from, "sid": sock.id, "at": now_ms() });
            let sent = sock.nsp.to(&room).emit("chat", &Args::one(line));
            ack_with(ack, json!({ "ok": true, "delivered": sent }));
        });
        nsp.on("online", move |sock, args, ack| {
            match clean(args.str(0), "room", 64) {
                Ok(room) => ack_with(ack, acked(&presence(&sock.nsp, &room, max_names))),
                Err(e) => refuse(ack, e),
            }
        });
        nsp.on_disconnect(move |sock, _reason| {
            for room in sock.rooms() {
                announce(&sock.nsp, &room, presence(&sock.nsp, &room, max_names));
            }
        });
        nsp
    }

    /// `/engine.io/`: every message, text or binary, sent straight back on its session.
    pub struct EngineEcho;
    impl Handler for EngineEcho {
        fn open(&self, _: &Arc<Session>) {}
        fn message(&self, s: &Arc<Session>, msg: Message) -> Result<(), String> {
            let out = match msg {
                Message::Text(t) => Out::text_with(|b| {
                    b.push(b'4');
                    b.extend_from_slice(t.as_bytes());
                }),
                Message::Binary(data) => Out::binary(data),
            };
            s.send_all(&[out]);
            Ok(())
        }
        fn close(&self, _: &Arc<Session>, _: &str) {}
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_user_table_evicts_its_oldest_session_past_the_bound() {
            let mut users = Users::new(2);
            let named = |n: &str| User {
                username: n.into(),
                seen: Instant::now(),
            };
            users.insert("s1", named("a"));
            users.insert("s2", named("b"));
            users.insert("s1", named("a2")); // a rename is not a new entry
            users.insert("s3", named("c"));
            assert!(users.get("s1").is_none(), "the oldest session went");
            assert_eq!(users.get("s2").map(|u| u.username.as_str()), Some("b"));
            assert_eq!(users.get("s3").map(|u| u.username.as_str()), Some("c"));
        }

        #[test]
        fn users_of_sessions_gone_longer_than_the_ttl_are_forgotten() {
            let mut users = Users::new(usize::MAX);
            let t0 = Instant::now();
            let ttl = Duration::from_secs(60);
            for s in ["gone", "live", "recent"] {
                users.insert(
                    s,
                    User {
                        username: s.into(),
                        seen: t0,
                    },
                );
            }
            let live: HashSet<String> = ["live".to_string()].into();
            users.expire(&live, t0 + Duration::from_secs(30), ttl);
            assert_eq!(users.by_session.len(), 3, "nobody is past the ttl yet");
            users.by_session.get_mut("recent").unwrap().seen = t0 + Duration::from_secs(50);
            users.expire(&live, t0 + Duration::from_secs(70), ttl);
            assert!(users.get("gone").is_none(), "70 s since its last socket");
            assert!(users.get("live").is_some(), "a socket is on /movies");
            assert!(users.get("recent").is_some(), "left 20 s ago");
            assert_eq!(users.order, ["live", "recent"]);
            users.expire(&HashSet::new(), t0 + Duration::from_secs(200), ttl);
            assert!(users.by_session.is_empty() && users.order.is_empty());
        }

        #[test]
        fn names_are_trimmed_and_checked() {
            assert_eq!(clean(Some("  ann "), "username", 32), Ok("ann".into()));
            for (input, says) in [
                (None, "must be a string"),
                (Some("   "), "empty"),
                (Some("a\u{7}b"), "control"),
                (Some(&*"x".repeat(33)), "longer than 32"),
            ] {
                assert!(clean(input, "username", 32).unwrap_err().contains(says));
            }
            assert!(clean(Some(&"é".repeat(32)), "username", 32).is_ok());
            assert!(clean(Some("a\nb"), "username", 32).is_err());
        }

        #[test]
        fn chat_text_may_hold_line_breaks_and_tabs_but_no_other_control_characters() {
            assert_eq!(
                clean_text(Some(" one\r\ntwo\tthree\n"), 1000),
                Ok("one\r\ntwo\tthree".into())
            );
            assert!(clean_text(Some("bell\u{7}"), 1000)
                .unwrap_err()
                .contains("control"));
            assert!(clean_text(Some("esc\u{1b}[31m"), 1000).is_err());
            assert!(clean_text(Some("\n\t\r\n"), 1000)
                .unwrap_err()
                .contains("empty"));
        }
    }
}

// ───────────────────────────────────────────────────────────────────────────────────────────
mod server {
    //! The accept loop, the connection threads, routing, the connection cap and shutdown.
    use crate::config::Config;
    use crate::engine::{Conn, Engine, Next, Timers, Upgraded};
    use crate::http::{self, HttpError, Limits};
    use crate::hub::Hub;
    use crate::{app, lock, log, Slot, ERROR, INFO, WARN};
    use std::collections::HashMap;
    use std::io::{self, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    pub const INDEX_HTML: &str = include_str!("index.html");

    pub struct Server {
        cfg: Arc<Config>,
        sio: Arc<Engine>,
        raw: Arc<Engine>,
        limits: Limits,
        open: AtomicUsize,
        stopping: AtomicBool,
        /// The connections serving HTTP (not yet or never a WebSocket), by fd. The shutdown
        /// shuts their read side, so one idle between requests ends at once instead of
        /// holding the exit until `--idle-timeout` or `--shutdown-timeout`.
        http_conns: Mutex<HashMap<i32, Arc<TcpStream>>>,
    }

    /// An entry of `Server::http_conns`, removed when this is dropped.
    struct Listed<'a>(&'a Server, i32);
    impl Drop for Listed<'_> {
        fn drop(&mut self) {
            lock(&self.0.http_conns).remove(&self.1);
        }
    }

    impl Server {
        pub fn new(cfg: Config) -> Arc<Server> {
            let cfg = Arc::new(cfg);
            let timers = Timers::start(cfg.thread_stack);
            let hub = Arc::new(Hub::new(cfg.clone(), timers.clone(), app::namespaces(&cfg)));
            housekeeping_every(&timers, &hub, cfg.user_ttl, Duration::from_secs(30));
            let sio = Engine::new(cfg.clone(), timers.clone(), hub, Some("session"));
            let raw = Engine::new(cfg.clone(), timers, Arc::new(app::EngineEcho), None);
            let limits = Limits {
                max_head: cfg.max_header_bytes,
                max_line: cfg.max_request_line,
                max_body: cfg.max_payload,
                header_timeout: cfg.header_timeout,
                idle_timeout: cfg.idle_timeout,
            };
            Arc::new(Server {
                cfg,
                sio,
                raw,
                limits,
                open: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
                http_conns: Mutex::default(),
            })
        }

        pub fn run(self: &Arc<Self>, listener: TcpListener) {
            loop {
                match listener.accept() {
                    Ok((tcp, peer)) => self.admit(tcp, peer),
                    Err(e) => match e.raw_os_error() {
                        // Out of file descriptors or memory: say so, back off, go on.
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                            log!(WARN, "accept: {e}; backing off 100 ms");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => {}
                        _ => {
                            log!(ERROR, "accept: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    },
                }
            }
        }

        fn admit(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
            let _ = tcp.set_nodelay(true);
            if self.cfg.socket_send_buffer > 0 {
                set_send_buffer(&tcp, self.cfg.socket_send_buffer);
            }
            let open = self.open.fetch_add(1, Ordering::AcqRel);
            if open >= self.cfg.max_connections || self.stopping.load(Ordering::Relaxed) {
                self.open.fetch_sub(1, Ordering::AcqRel);
                return refuse_busy(&tcp);
            }
            let server = self.clone();
            let spawned = crate::spawn_detached(
                self.cfg.thread_stack,
                Box::new(move || {
                    if server.cfg.batch_threads {
                        crate::sched_batch();
                    }
                    let _slot = Slot(&server.open);
                    if let Some(ws) = server.connection(tcp, peer) {
                        ws.run();
                    }
                }),
            );
            if let Err(e) = spawned {
                // The thread was not made: the stream was dropped with the closure.
                self.open.fetch_sub(1, Ordering::AcqRel);
                log!(WARN, "cannot start a connection thread: {e}");
            }
        }

        /// Serves HTTP requests until the connection ends or becomes a WebSocket, which it
        /// returns: the caller runs it after this frame is gone, so the stack a long-lived
        /// WebSocket sits on is shallower (its pages stay resident for the connection's life).
        #[inline(never)]
        fn connection(&self, tcp: TcpStream, peer: SocketAddr) -> Option<Box<Upgraded>> {
            let tcp = Arc::new(tcp);
            lock(&self.http_conns).insert(tcp.as_raw_fd(), tcp.clone());
            let _listed = Listed(self, tcp.as_raw_fd());
            if self.stopping.load(Ordering::Relaxed) {
                refuse_busy(&tcp); // admitted as the shutdown began, after it looked
                return None;
            }
            let peer_ip = peer.ip();
            let peer = peer.to_string();
            crate::name_after_peer(&peer);
            let mut buf = Vec::new();
            let mut read_timeout = http::ReadTimeout::default();
            // As a WebSocket's reader does (engine::WsIo): a polling client's GET right after
            // its POST is read without a sleep (`http::Spin`).
            let mut spin = http::Spin::new(self.cfg.spin);
            let mut peer_cpu = crate::PeerCpu::new(peer_ip, self.cfg.batch_threads);
            loop {
                let spins = spin.allowed(self.open.load(Ordering::Relaxed));
                if let Some(budget) = spin.budget().filter(|_| spins && buf.is_empty()) {
                    // An error or the end of the stream is met again by the read below.
                    let _ = http::poll_more(&tcp, &mut buf, budget);
                }
                let since = Instant::now();
                let read = http::read_request(&tcp, &mut buf, &self.limits, &mut read_timeout);
                if spins {
                    spin.waited(since);
                }
                peer_cpu.woke(&tcp, since);
                let req = match read {
                    Ok(req) => req,
                    Err(HttpError::Closed) => return None,
                    Err(HttpError::Status(status, message)) => {
                        log!(crate::DEBUG, "{peer}: {status} {message}");
                        let _ = http::respond(
                            &tcp,
                            status,
                            &[("Content-Type", "text/plain")],
                            message.as_bytes(),
                            false,
                        );
                        return None;
                    }
                };
                let mut conn = Conn {
                    tcp: &tcp,
                    peer: &peer,
                    peer_cpu: &peer_cpu,
                    leftover: &mut buf,
                    read_timeout: &mut read_timeout,
                };
                match self.route(&req, &mut conn) {
                    Next::KeepAlive if self.stopping.load(Ordering::Relaxed) => return None,
                    Next::KeepAlive => {}
                    Next::Close => return None,
                    Next::WebSocket(ws) => return Some(ws),
                }
            }
        }

        fn route(&self, req: &http::Request, c: &mut Conn) -> Next {
            let page = |status: u16, kind: &str, body: &[u8]| {
                let keep = req.keep_alive && !req.oversize;
                let written = http::respond(c.tcp, status, &[("Content-Type", kind)], body, keep);
                Next::after(written, keep)
            };
            match req.path() {
                "/socket.io/" | "/socket.io" => self.sio.serve(req, c),
                "/engine.io/" | "/engine.io" => self.raw.serve(req, c),
                _ if req.oversize => page(413, "text/plain", b"payload too large"),
                _ if req.method() != "GET" && req.method() != "HEAD" => {
                    page(405, "text/plain", b"method not allowed")
                }
                "/" | "/index.html" => page(200, "text/html; charset=utf-8", INDEX_HTML.as_bytes()),
                "/socket.io/sse.js" => page(
                    200,
                    "text/javascript; charset=utf-8",
                    crate::SSE_JS.as_bytes(),
                ),
                "/health" => {
                    let body = format!(
                        "{{\"status\":\"ok\",\"sessions\":{},\"connections\":{}}}",
                        self.sio.sessions().len() + self.raw.sessions().len(),
                        self.open.load(Ordering::Relaxed)
                    );
                    page(200, "application/json", body.as_bytes())
                }
                _ => page(404, "text/plain", b"not found"),
            }
        }

        /// SIGINT/SIGTERM: stop accepting, close every session (a close packet to each), give
        /// the connections up to `--shutdown-timeout` to finish, exit.
        pub fn shutdown(&self) {
            self.stopping.store(true, Ordering::Relaxed);
            let sessions: Vec<_> = self
                .sio
                .sessions()
                .into_iter()
                .chain(self.raw.sessions())
                .collect();
            log!(INFO, "shutting down: closing {} sessions", sessions.len());
            for s in &sessions {
                s.close("server shutting down");
            }
            // Connections idle between requests end now; one that is serving a request
            // finishes it and then closes (`connection`).
            let listed: Vec<Arc<TcpStream>> = lock(&self.http_conns).values().cloned().collect();
            for tcp in listed {
                let _ = tcp.shutdown(Shutdown::Read);
            }
            let deadline = Instant::now() + self.cfg.shutdown_timeout;
            while Instant::now() < deadline && self.busy_connections() > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            log!(INFO, "stopped");
        }

        fn busy_connections(&self) -> usize {
            self.open.load(Ordering::Relaxed)
        }
    }

    /// Every `period`: forgets `/movies` users gone longer than `user_ttl`, then hands memory
    /// freed by ended connections back to the OS, so RSS follows the load down.
    fn housekeeping_every(
        timers: &Arc<Timers>,
        hub: &Arc<Hub>,
        user_ttl: Duration,
        period: Duration,
    ) {
        let (again, hub) = (timers.clone(), hub.clone());
        timers.after(period, move || {
            if let Some(movies) = hub.namespace("/movies") {
                app::expire_users(movies, user_ttl);
            }
            // SAFETY: malloc_trim only releases free pages of the allocator's own heaps.
            unsafe { libc::malloc_trim(0) };
            housekeeping_every(&again, &hub, user_ttl, period);
        });
    }

    /// Caps the kernel's send buffer, so a client that stops reading shows up in our backlog
    /// (and is closed at its bound) instead of parking megabytes in the kernel.
    fn set_send_buffer(tcp: &TcpStream, bytes: usize) {
        let size = bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: setsockopt on a live socket with a pointer to a local int of the given size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(tcp),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    /// Over the connection cap: a short 503 without spending a thread, never blocking accept.
    fn refuse_busy(tcp: &TcpStream) {
        let _ = tcp.set_nonblocking(true);
        let body = b"server busy: too many connections";
        let mut out = http::head(
            503,
            &[("Retry-After", "1"), ("Content-Type", "text/plain")],
            Some(body.len()),
            false,
        );
        out.extend_from_slice(body);
        let _ = (&*tcp).write_all(&out);
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }

    /// Raises the soft limit on open files to the hard one: a thread per connection holds a
    /// descriptor each, and a desktop's default soft limit (1024 under systemd, whose hard
    /// limit is 524288) would refuse connections long before `--max-connections`. Returns the
    /// limits before and after, when it changed them.
    pub fn raise_fd_limit() -> Option<(u64, u64)> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write the struct passed; nothing else.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            // An unlimited hard limit is capped at the kernel's default `fs.nr_open`.
            let most = lim.rlim_max.min(1 << 20);
            if lim.rlim_cur >= most {
                return None;
            }
            let before = lim.rlim_cur;
            lim.rlim_cur = most;
            (libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0).then_some((before, most))
        }
    }

    /// Blocks SIGINT and SIGTERM in the calling thread (and every thread it starts later), so
    /// that only `wait_for_signal` receives them.
    pub fn block_signals() -> libc::sigset_t {
        // SAFETY: plain libc signal-set calls on a zeroed local set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            set
        }
    }

    pub fn wait_for_signal(set: libc::sigset_t) -> i32 {
        let mut sig = 0;
        // SAFETY: sigwait on a set blocked in every thread.
        unsafe { libc::sigwait(&set, &mut sig) };
        sig
    }

    pub fn bind(cfg: &Config) -> io::Result<TcpListener> {
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))?;
        // std listens with a backlog of 128: a burst of connects beyond it loses SYNs, and each
        // lost SYN costs the client a 1 s retransmit (measured: 10k connects ran at half the
        // rate of 5k). The kernel caps this at net.core.somaxconn.
        // SAFETY: listen() again on our own listening socket only changes its backlog.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
        Ok(listener)
    }
}

/// The SSE transport for the official socket.io-client 4.8 (engine.io-client 6.6 takes transport
/// classes), served at `/socket.io/sse.js` (PROTOCOL.md §3). It is the client's own polling
/// class with the downstream replaced: an EventSource instead of GETs; POSTs go up as in
/// polling. EventSource reconnects by itself with `Last-Event-ID`, which the server resumes.
/// Use: `transports: [WebSocket, sseTransport(XHR), XHR], tryAllTransports: true`.
pub const SSE_JS: &str = r#"// tinysio SSE transport for socket.io-client >= 4.8. Served by tinysio at /socket.io/sse.js.
//   import { io, WebSocket, XHR } from "socket.io-client";        // Node: NodeWebSocket, NodeXHR
//   import { sseTransport } from "http://HOST/socket.io/sse.js";
//   io(URL, { transports: [WebSocket, sseTransport(XHR), XHR], tryAllTransports: true });
// Polling is the client's polling class (XHR, Fetch or NodeXHR); EventSourceImpl defaults to
// the browser's (under Node pass one, e.g. the `eventsource` package).
export function sseTransport(Polling, EventSourceImpl = globalThis.EventSource) {
  return class SSE extends Polling {
    get name() {
      return "sse";
    }
    // The polling loop asks for the next GET after every payload; SSE has one stream instead.
    doPoll() {
      if (this._stream) return;
      const stream = new EventSourceImpl(this.uri(), { withCredentials: !!this.opts.withCredentials });
      this._stream = stream;
      stream.onmessage = (event) => this.onData(event.data);
      stream.onerror = () => {
        // CONNECTING: EventSource is resuming the stream by itself (Last-Event-ID).
        // CLOSED, or failing before the open packet: the transport has failed.
        if (stream.readyState === 2 || this.readyState === "opening") {
          this._stop();
          this.onError("sse error", "the event stream failed");
        }
      };
    }
    // Upgrade: the server answers the probe with a noop on this stream and sends nothing
    // after it. Stop only once that noop has arrived (everything before it has too: closing
    // earlier would lose packets already on the wire) and pending POSTs are done.
    pause(onPause) {
      this.readyState = "pausing";
      const ready = () => {
        if (!this._noop || !this.writable) return;
        this.off("drain", ready);
        this._onNoop = null;
        this._stop();
        this.readyState = "paused";
        onPause();
      };
      this._onNoop = ready;
      this.on("drain", ready);
      ready();
    }
    onData(data) {
      super.onData(data);
      if (data === "6") {
        this._noop = true;
        if (this._onNoop) this._onNoop();
      }
    }
    doClose() {
      this._stop();
      super.doClose();
    }
    onClose(details) {
      this._stop();
      super.onClose(details);
    }
    _stop() {
      if (this._stream) {
        this._stream.close();
        this._stream = null;
      }
    }
  };
}
"#;

fn main() {
    // glibc gives each busy thread its own malloc arena; with a thread per connection that
    // fragments memory that is never handed back. A few arenas serve 2 cores as well.
    // SAFETY: mallopt before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 4) };
    let signals = server::block_signals();
    let cfg = match config::parse(std::env::args().skip(1).collect(), |k| {
        std::env::var(k).ok()
    }) {
        Ok(cfg) => cfg,
        Err(message) if message.starts_with("tinysio:") => {
            // `tinysio --help | head` closes stdout early: not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), message.as_bytes());
            return;
        }
        Err(message) => {
            eprintln!("tinysio: {message}");
            std::process::exit(2);
        }
    };
    let raised = server::raise_fd_limit();
    process_cpus(); // read before any thread narrows its own set
    let listener = match server::bind(&cfg) {
        Ok(l) => l,
        Err(e) => {
            log!(ERROR, "cannot listen on {}:{}: {e}", cfg.host, cfg.port);
            std::process::exit(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let profile = if cfg.conformance {
        " (conformance profile)"
    } else {
        ""
    };
    // The shutdown runs every session's disconnect handlers on this thread.
    let stack = cfg.thread_stack;
    let srv = server::Server::new(cfg);
    let waiter = srv.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(stack)
        .spawn(move || {
            let sig = server::wait_for_signal(signals);
            log!(INFO, "signal {sig} received");
            // A disconnect handler that panics must not leave a server SIGTERM cannot stop.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waiter.shutdown()));
            std::process::exit(0);
        })
        .expect("the signals thread starts at boot, before any client");
    // Logged once every thread of the server's own exists: the line means ready.
    log!(INFO, "listening on http://{addr}{profile}");
    if let Some((before, now)) = raised {
        log!(INFO, "open files limit raised from {before} to {now}");
    }
    srv.run(listener);
}

#[cfg(test)]
mod testutil {
    /// xorshift64: a seeded, repeatable source for the property tests.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }
}
