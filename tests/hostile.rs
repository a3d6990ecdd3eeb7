//! Hostile clients (issue: limits, back-pressure, fuzzing): every attack is answered with a
//! clear HTTP error or a protocol close, the process never panics, and afterwards a normal
//! client connects and chats.
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Sends raw bytes on a fresh connection; returns whatever the server answered before closing.
fn raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = tcp.write_all(bytes);
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    out
}

fn status_of(answer: &[u8]) -> u16 {
    parse_response(answer).map_or(0, |r| r.status)
}

/// A WebSocket after a hand-made handshake, for writing frames no library would.
fn raw_ws(addr: &str) -> TcpStream {
    let mut tcp = ws_upgrade(addr, None).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// Reads server frames until a close frame; returns its code (None if the socket just ended).
fn close_code(tcp: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let _ = tcp.read_to_end(&mut all);
    let mut i = 0;
    while i + 2 <= all.len() {
        let (op, len) = (all[i] & 0x0f, (all[i + 1] & 0x7f) as usize);
        let (len, head) = match len {
            126 => (u16::from_be_bytes([all[i + 2], all[i + 3]]) as usize, 4),
            127 => return None,
            n => (n, 2),
        };
        if op == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([all[i + head], all[i + head + 1]]));
        }
        i += head + len;
    }
    None
}

/// After everything: a normal client connects to /movies, names itself, joins and chats.
fn normal_client_chats(server: &Server) {
    let mut ws = ws_in(&server.addr, "/movies");
    ws_send(&mut ws, "42/movies,1[\"identify\",\"survivor\"]");
    ws_until(&mut ws, |t| t.starts_with("43/movies,1"));
    ws_send(&mut ws, "42/movies,2[\"join\",\"Alien\"]");
    ws_until(&mut ws, |t| t.starts_with("43/movies,2"));
    ws_send(
        &mut ws,
        "42/movies,3[\"chat\",\"Alien\",\"still standing\"]",
    );
    let chat = ws_until(&mut ws, |t| t.contains("\"chat\""));
    assert!(chat.contains("still standing"), "{chat}");
}

#[test]
fn hostile_clients_get_clear_refusals_and_never_disturb_a_normal_one() {
    let mut server = Server::start(&["--header-timeout", "500", "--max-payload", "10000"]);
    let a = server.addr.clone();
    let mut rng = Rng(0x5eed);

    // Random bytes on raw sockets.
    for _ in 0..40 {
        let len = 1 + rng.next() as usize % 4096;
        let junk = rng.bytes(len);
        let answer = raw(&a, &junk);
        assert!(
            answer.is_empty() || [400, 408, 414, 431, 501].contains(&status_of(&answer)),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    // Slowloris: half-sent heads are cut off at the header timeout with 408, while a normal
    // request on another connection is served at once.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut t = TcpStream::connect(&a).unwrap();
            t.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            t.set_read_timeout(Some(PATIENCE)).unwrap();
            t
        })
        .collect();
    assert_eq!(http(&a, "GET", "/health", &[], b"").0, 200);
    for t in &mut slow {
        let _ = t.write_all(b"a");
        let mut answer = Vec::new();
        let _ = t.read_to_end(&mut answer);
        assert_eq!(
            status_of(&answer),
            408,
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    // Huge heads and lines.
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(status_of(&raw(&a, huge_header.as_bytes())), 431);
    let many = (0..100)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect::<String>();
    assert_eq!(
        status_of(&raw(&a, format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())),
        431
    );
    let long_line = format!(
        "GET /socket.io/?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(10_000)
    );
    assert_eq!(status_of(&raw(&a, long_line.as_bytes())), 414);
    assert_eq!(
        status_of(&raw(
            &a,
            b"POST /health HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
        )),
        413
    );
    assert_eq!(
        status_of(&raw(
            &a,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )),
        501
    );

    // Invalid UTF-8 in every field.
    for request in [
        &b"G\xffT / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /socket.io/?EIO=4&transport=polling&sid=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: http://\xff\r\n\r\n",
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nCookie: session=\xff\xfe\r\n\r\n",
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-\xff: v\r\n\r\n",
        b"GET /socket.io/?EIO=4&transport=sse HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff:\xff\r\n\r\n",
    ] {
        let mut request = request.to_vec();
        let at = request.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        request.splice(at..at, b"Connection: close\r\n".iter().copied());
        let answer = raw(&a, &request);
        let status = status_of(&answer);
        assert!(matches!(status, 200 | 400 | 403 | 404), "{:?} → {:?}", String::from_utf8_lossy(&request), String::from_utf8_lossy(&answer));
        assert!(!answer.windows(2).any(|w| w == [0xff, 0xfe]), "nothing unchecked is echoed");
    }
    let s = Polling::open(&server, "/socket.io/");
    let (status, _, _) = http(&a, "POST", &s.query(), &[], b"4\xff\xfe");
    assert_eq!(status, 400, "a body that is not UTF-8 closes the session");
    assert_eq!(s.get().0, 400);

    // Bad WebSocket frames: unmasked, unknown opcode, oversize.
    let mut t = raw_ws(&a);
    t.write_all(&[0x81, 0x02, b'4', b'x']).unwrap(); // a client frame without a mask
    assert_eq!(close_code(&mut t), Some(1002));
    let mut t = raw_ws(&a);
    t.write_all(&masked_frame(0x83, b"??")).unwrap(); // opcode 3 is reserved
    assert_eq!(close_code(&mut t), Some(1002));
    let mut t = raw_ws(&a);
    let mut big = vec![0x82, 0xff];
    big.extend_from_slice(&(1u64 << 40).to_be_bytes()); // announces a terabyte
    big.extend_from_slice(&[1, 2, 3, 4]);
    t.write_all(&big).unwrap();
    assert_eq!(close_code(&mut t), Some(1009));

    // Socket.IO attachment-count mismatches close the session.
    for (first, second) in [
        (
            "451-[\"message\",{\"_placeholder\":true,\"num\":0}]",
            Some("4text"),
        ),
        ("452-[\"message\",{\"_placeholder\":true,\"num\":0}]", None),
    ] {
        let mut ws = ws_connect(&a, "/socket.io/?EIO=4&transport=websocket", &[]).unwrap();
        ws_text(&mut ws);
        ws_send(&mut ws, "40");
        ws_until(&mut ws, |t| t.starts_with("40"));
        ws_send(&mut ws, first);
        if let Some(text) = second {
            ws_send(&mut ws, text);
        }
        assert_eq!(ws_until(&mut ws, |t| t == "1"), "1");
    }
    let mut ws = ws_connect(&a, "/socket.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    ws_send(&mut ws, "40");
    ws_until(&mut ws, |t| t.starts_with("40"));
    ws.send(Message::binary(vec![1, 2, 3])).unwrap(); // a binary message nobody announced
    assert_eq!(ws_until(&mut ws, |t| t == "1"), "1");

    // JSON nested to --max-json-depth (32: the outer array and 31 inside) is echoed; deeper is
    // a protocol error, refused before the parser recurses on a small connection stack.
    for (inner, echoed) in [(31, true), (32, false), (4000, false)] {
        let mut ws = ws_connect(&a, "/socket.io/?EIO=4&transport=websocket", &[]).unwrap();
        ws_text(&mut ws);
        ws_send(&mut ws, "40");
        ws_until(&mut ws, |t| t.starts_with("40"));
        let deep = format!("42[\"message\",{}{}]", "[".repeat(inner), "]".repeat(inner));
        ws_send(&mut ws, &deep);
        if echoed {
            let back = ws_until(&mut ws, |t| t.contains("message-back"));
            assert_eq!(back, deep.replace("\"message\"", "\"message-back\""));
        } else {
            assert_eq!(
                ws_until(&mut ws, |t| t == "1"),
                "1",
                "nesting {inner} closes the session"
            );
        }
    }
    server.wait_log("JSON nested deeper than 32 levels");

    // A thousand malformed queries on one keep-alive connection.
    let mut tcp = TcpStream::connect(&a).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut answered = 0;
    let mut buf = Vec::new();
    for i in 0..1000 {
        let junk: String = rng
            .bytes(1 + i % 40)
            .iter()
            .map(|b| (b'!' + b % 90) as char)
            .filter(|c| *c != ' ')
            .collect();
        let method = if i % 3 == 0 { "POST" } else { "GET" };
        write!(
            tcp,
            "{method} /socket.io/?{junk} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n40"
        )
        .unwrap();
        // Read exactly one response (its Content-Length says how much).
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .split("content-length: ")
                    .nth(1)
                    .and_then(|v| v.split("\r\n").next())
                    .unwrap()
                    .parse()
                    .unwrap();
                if buf.len() >= end + 4 + len {
                    assert!(
                        head.starts_with("http/1.1 400") || head.starts_with("http/1.1 403"),
                        "{head}"
                    );
                    buf.drain(..end + 4 + len);
                    answered += 1;
                    break;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "the server closed a keep-alive connection after {answered} answers"
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    assert_eq!(answered, 1000);

    normal_client_chats(&server);
    server.assert_healthy();
}

#[test]
fn closes_owing_a_noop_to_a_later_get_are_bounded_by_the_session_cap() {
    // Each client close with no GET waiting is remembered (a GET sent with it gets the
    // noop); at most --max-sessions at once, so closing sessions fast cannot grow it.
    let server = Server::start(&["--max-sessions", "2"]);
    let closed: Vec<Polling> = (0..3)
        .map(|_| {
            let s = Polling::open(&server, "/engine.io/");
            assert_eq!(s.post("1"), (200, "ok".into()));
            s
        })
        .collect();
    assert_eq!(closed[2].get().0, 400, "past the cap: an unknown session");
    assert_eq!(closed[0].get(), (200, "6".into()));
    assert_eq!(closed[1].get(), (200, "6".into()));
}

#[test]
fn a_client_that_never_connects_a_namespace_is_closed_at_the_connect_timeout() {
    let server = Server::start(&["--connect-timeout", "300"]);
    let s = Polling::open(&server, "/socket.io/");
    let line = server.wait_log(&format!("close {}", s.sid));
    assert!(
        line.ends_with("connect timeout (no namespace joined)"),
        "{line}"
    );
}

#[test]
fn namespace_and_attachment_limits_are_enforced() {
    let server = Server::start(&["--max-namespaces", "1", "--max-attachments", "2"]);
    let mut ws = ws_connect(&server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    ws_send(&mut ws, "40");
    ws_until(&mut ws, |t| t.starts_with("40{"));
    ws_send(&mut ws, "40/movies,");
    assert_eq!(
        ws_until(&mut ws, |t| t.starts_with("44")),
        r#"44/movies,{"message":"Too many namespaces on one connection"}"#
    );
    ws_send(&mut ws, "453-[\"message\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1},{\"_placeholder\":true,\"num\":2}]");
    assert_eq!(ws_until(&mut ws, |t| t == "1"), "1");
    server.wait_log("more than 2 attachments");
}

#[test]
fn binary_attachments_of_one_packet_are_bounded_in_bytes() {
    let server = Server::start(&["--max-binary-bytes", "10"]);
    let mut ws = ws_in(&server.addr, "/");
    // A `message` with two attachments of `a` and `b` bytes.
    let send = |ws: &mut Ws, a: usize, b: usize| {
        ws_send(
            ws,
            r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
        );
        ws.send(Message::binary(vec![1; a])).unwrap();
        ws.send(Message::binary(vec![2; b])).unwrap();
    };
    // Ten bytes in all pass and come back...
    send(&mut ws, 5, 5);
    assert!(ws_text(&mut ws).starts_with("452-[\"message-back\""));
    assert_eq!(ws_binary(&mut ws), [1; 5]);
    assert_eq!(ws_binary(&mut ws), [2; 5]);
    // ...eleven close the session.
    send(&mut ws, 5, 6);
    assert_eq!(ws_until(&mut ws, |t| t == "1"), "1");
    server.wait_log("binary attachments over 10 bytes in one packet");
}

#[test]
fn rooms_one_socket_is_in_are_bounded() {
    let server = Server::start(&["--max-rooms", "2"]);
    let mut ws = ws_in(&server.addr, "/movies");
    let mut ack = |id: u32, args: &str| {
        ws_send(&mut ws, &format!("42/movies,{id}[{args}]"));
        let prefix = format!("43/movies,{id}[");
        ws_until(&mut ws, |t| t.starts_with(&prefix))[prefix.len()..].to_string()
    };
    assert!(ack(1, r#""join","Alien""#).starts_with(r#"{"ok":true"#));
    assert!(ack(2, r#""join","Brazil""#).starts_with(r#"{"ok":true"#));
    assert_eq!(
        ack(3, r#""join","Casablanca""#),
        r#"{"ok":false,"error":"in 2 rooms already; leave one first"}]"#
    );
    // Joining a room it is in already takes no new place; leaving one frees a place.
    assert!(ack(4, r#""join","Alien""#).starts_with(r#"{"ok":true"#));
    assert!(ack(5, r#""leave","Brazil""#).starts_with(r#"{"ok":true"#));
    assert!(ack(6, r#""join","Casablanca""#).starts_with(r#"{"ok":true"#));
}

#[test]
fn acks_the_server_awaits_from_one_socket_are_bounded() {
    let server = Server::start(&["--max-pending-acks", "2"]);
    let mut ws = ws_in(&server.addr, "/");
    // `server-ack` asks this client for an ack it never gives: two are awaited, the third
    // fails at once without being sent.
    for _ in 0..3 {
        ws_send(&mut ws, r#"42["server-ack",60000,"x"]"#);
    }
    assert_eq!(ws_text(&mut ws), r#"421["ack-me","x"]"#);
    assert_eq!(ws_text(&mut ws), r#"422["ack-me","x"]"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"42["server-ack-result",{"ok":false,"error":"too many pending acks"}]"#
    );
    // An answered ack frees its place.
    ws_send(&mut ws, r#"431["y"]"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"42["server-ack-result",{"ok":true,"args":["y"]}]"#
    );
    ws_send(&mut ws, r#"42["server-ack",60000,"z"]"#);
    assert!(ws_text(&mut ws).ends_with(r#"["ack-me","z"]"#));
}

#[test]
fn sigterm_sends_every_session_a_close_packet_and_exits() {
    let mut server = Server::start(&["--shutdown-timeout", "2000", "--log-level", "debug"]);
    let mut ws = ws_connect(&server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    let s = Polling::open(&server, "/socket.io/");
    let pending = s.get_in_background();
    server.wait_log(&format!("{} GET waits", s.sid));
    server.signal("-TERM");
    assert_eq!(
        ws_until(&mut ws, |t| t == "1"),
        "1",
        "the WebSocket session gets a close packet"
    );
    let (status, body) = pending.join().unwrap();
    assert_eq!(
        (status, body),
        (200, b"1".to_vec()),
        "the pending GET is answered with a close packet"
    );
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(server
        .log_text()
        .contains("shutting down: closing 2 sessions"));
}

#[test]
fn logs_at_the_default_level_carry_no_payloads() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.addr, "/socket.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    ws_send(&mut ws, "40");
    ws_until(&mut ws, |t| t.starts_with("40"));
    ws_send(&mut ws, "42[\"message\",\"SECRET-IN-AN-EVENT\"]");
    ws_until(&mut ws, |t| t.contains("message-back"));
    ws_send(&mut ws, "42[\"message\",\"SECRET-IN-BAD-JSON\""); // a parse error closes it
    assert_eq!(ws_until(&mut ws, |t| t == "1"), "1");
    let line = server.wait_log("parse error");
    assert!(
        !server.log_text().contains("SECRET"),
        "a payload reached the log: {line}"
    );
}

#[test]
fn idle_keep_alive_connections_are_closed_at_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout", "300"]);
    let mut tcp = TcpStream::connect(&server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // One answer on the kept-alive connection, then the server closes it once it idles.
    let mut all = Vec::new();
    let n = tcp.read_to_end(&mut all).unwrap_or(0);
    assert!(
        n > 0 && parse_response(&all).is_some_and(|r| r.status == 200),
        "{}",
        String::from_utf8_lossy(&all)
    );
    assert!(String::from_utf8_lossy(&all).contains("Connection: keep-alive"));
}

#[test]
fn a_log_nobody_reads_any_more_takes_no_thread_down_and_sigterm_still_ends_the_server() {
    // Every request below logs (debug level: refusals, upgrade steps, opens and closes); each
    // of those writes now fails with EPIPE and must be dropped, not panic its thread.
    let mut server = Server::start_then_close_log(&["--log-level", "debug"]);
    for _ in 0..3 {
        let s = Polling::open(&server, "/socket.io/");
        assert_eq!(s.post("1").0, 200);
    }
    let answer = raw(
        &server.addr,
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 404);
    normal_client_chats(&server);
    server.signal("-TERM");
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_keep_alive_connection_idle_between_requests_does_not_hold_the_shutdown() {
    // A browser keeps the connection that loaded the page; a polling client keeps the one
    // its last GET came on. Neither is a request under way: the exit must not wait for them
    // (here up to a shutdown timeout far beyond the test's patience).
    let mut server = Server::start(&["--shutdown-timeout", "600000"]);
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    idle.set_read_timeout(Some(PATIENCE)).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 512];
    let n = idle.read(&mut answer).unwrap();
    assert_eq!(status_of(&answer[..n]), 200);
    server.signal("-TERM");
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        idle.read(&mut answer).unwrap(),
        0,
        "the idle connection was closed"
    );
}

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    /// 1 to `max` random bytes.
    fn junk(&mut self, max: usize) -> Vec<u8> {
        let n = 1 + self.below(max);
        self.bytes(n)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Events and arguments the chaos clients below draw from: every handler of `/` and `/movies`,
/// with arguments of the right shape and of wrong ones.
const EVENTS: &[&str] = &[
    "message",
    "message-with-ack",
    "server-ack",
    "emit-with-ack",
    "disconnect-me",
    "broadcast",
    "identify",
    "join",
    "leave",
    "chat",
    "online",
    "connect",
    "",
];
const ARGS: &[&str] = &[
    "\"Alien\"",
    "\"Heat\"",
    "\"ada\"",
    "5",
    "50",
    "null",
    "{\"a\":[1]}",
    "[1000,\"x\"]",
    "\"\"",
    "-0",
    "1e400",
    "\"\\u0000\\ud800\"",
    "\"é☃\"",
    "{\"_placeholder\":true,\"num\":0}",
];

/// A Socket.IO packet: mostly well-formed, for `/`, `/movies` or a namespace that is not there.
fn sio_packet(rng: &mut Rng) -> String {
    let nsp = rng.pick(&["", "", "/movies,", "/movies,", "/nope,"]);
    let ack = if rng.chance(60) {
        rng.below(20).to_string()
    } else {
        String::new()
    };
    let args: Vec<&str> = (0..rng.below(4)).map(|_| rng.pick(ARGS)).collect();
    let event = format!("\"{}\"", rng.pick(EVENTS));
    let list = [vec![event.as_str()], args].concat().join(",");
    let packet = match rng.below(10) {
        0 => format!("0{nsp}"),
        1 => format!("1{nsp}"),
        2 => format!("3{nsp}{}[{}]", rng.below(20), rng.pick(ARGS)),
        3 => format!("51-{nsp}{ack}[{list},{{\"_placeholder\":true,\"num\":0}}]"),
        _ => format!("2{nsp}{ack}[{list}]"),
    };
    if !rng.chance(10) {
        return packet;
    }
    // Now and then a piece of junk at a random place.
    let at = packet
        .char_indices()
        .map(|(i, _)| i)
        .nth(rng.below(packet.chars().count()))
        .unwrap_or(0);
    let junk = rng.pick(&["\u{1e}", "{", "]", "99999999999999999999", "\0", "-", "/"]);
    format!("{}{junk}{}", &packet[..at], &packet[at..])
}

/// An Engine.IO packet: mostly a Socket.IO message, else any other type, known or not.
fn eio_packet(rng: &mut Rng) -> String {
    if rng.chance(85) {
        return format!("4{}", sio_packet(rng));
    }
    let other = [
        "2", "3", "3probe", "2probe", "5", "6", "1", "0", "7", "", "bAQID", "b!!",
    ];
    rng.pick(&other).to_string()
}

fn eio_payload(rng: &mut Rng) -> String {
    (0..1 + rng.below(5))
        .map(|_| eio_packet(rng))
        .collect::<Vec<_>>()
        .join("\u{1e}")
}

/// Writes `bytes` on a fresh connection and reads what comes back until the server closes or
/// `wait` passes with nothing new; no outcome is an error here.
fn exchange(addr: &str, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = tcp.write_all(bytes);
    drain(&mut tcp, wait)
}

fn drain(tcp: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let _ = tcp.set_read_timeout(Some(wait));
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    while let Ok(n @ 1..) = tcp.read(&mut chunk) {
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

fn request_bytes(method: &str, path_and_query: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

fn sid_in(answer: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(answer);
    let rest = text.split("\"sid\":\"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

/// A WebSocket upgrade written by hand, to `sid`'s session or a new one; its answer unread
/// (`raw_ws` reads it).
fn ws_upgrade(addr: &str, sid: Option<&str>) -> Option<TcpStream> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_write_timeout(Some(PATIENCE)).ok()?;
    let sid = sid.map_or(String::new(), |s| format!("&sid={s}"));
    let head = format!(
        "GET /socket.io/?EIO=4&transport=websocket{sid} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).ok()?;
    Some(tcp)
}

const BRIEF: Duration = Duration::from_millis(20);

/// One chaos client: sessions over polling (upgrades among them, half done or whole),
/// WebSocket and SSE, each sending random packets, plus requests that are not Engine.IO at all.
/// Now and then it acts on another client's session (`sids` is shared).
fn chaos_client(addr: &str, seed: u64, episodes: usize, sids: &Mutex<Vec<String>>) {
    let mut rng = Rng(seed);
    for _ in 0..episodes {
        let other = {
            let sids = sids.lock().unwrap();
            sids.get(rng.below(sids.len().max(1)))
                .cloned()
                .unwrap_or_default()
        };
        match rng.below(10) {
            0..=3 => {
                let open = request_bytes("GET", "/socket.io/?EIO=4&transport=polling", "", b"");
                let Some(sid) = sid_in(&exchange(addr, &open, PATIENCE)) else {
                    continue;
                };
                sids.lock().unwrap().push(sid.clone());
                for _ in 0..1 + rng.below(7) {
                    let target = if rng.chance(90) { &sid } else { &other };
                    let q = format!("/socket.io/?EIO=4&transport=polling&sid={target}");
                    match rng.below(6) {
                        0..=2 => {
                            let post =
                                request_bytes("POST", &q, "", eio_payload(&mut rng).as_bytes());
                            exchange(addr, &post, PATIENCE);
                        }
                        3 | 4 => {
                            let wait = Duration::from_millis(1 + rng.below(200) as u64);
                            exchange(addr, &request_bytes("GET", &q, "", b""), wait);
                        }
                        _ => {
                            let Some(mut ws) = ws_upgrade(addr, Some(target)) else {
                                continue;
                            };
                            let mut frames = masked_frame(0x81, b"2probe");
                            if rng.chance(70) {
                                frames.extend(masked_frame(0x81, b"5"));
                            }
                            for _ in 0..rng.below(4) {
                                frames.extend(masked_frame(0x81, eio_packet(&mut rng).as_bytes()));
                            }
                            let _ = ws.write_all(&frames);
                            drain(&mut ws, BRIEF);
                        }
                    }
                }
            }
            4..=7 => {
                let Some(mut ws) = ws_upgrade(addr, None) else {
                    continue;
                };
                if rng.chance(15) {
                    // A slow reader: a small receive buffer and echoes of 8 KiB it does not
                    // read, so that the server's sends find the socket full.
                    shrink_receive_buffer(&ws);
                    let echo = format!("42[\"message\",\"{}\"]", "x".repeat(8000));
                    let mut frames = masked_frame(0x81, b"40");
                    for _ in 0..1 + rng.below(40) {
                        frames.extend(masked_frame(0x81, echo.as_bytes()));
                    }
                    let _ = ws.write_all(&frames);
                }
                for _ in 0..1 + rng.below(12) {
                    let text = eio_packet(&mut rng);
                    let bytes = match rng.below(12) {
                        0..=6 => masked_frame(0x81, text.as_bytes()),
                        7 => {
                            // Fragmented, with a ping between the fragments.
                            let cut = text.len() / 2;
                            let (a, b) = text.as_bytes().split_at(cut);
                            [
                                masked_frame(0x01, a),
                                masked_frame(0x89, b""),
                                masked_frame(0x80, b),
                            ]
                            .concat()
                        }
                        8 => masked_frame(
                            [0x82, 0x83, 0x88, 0x89, 0x8a, 0x80, 0x8f][rng.below(7)],
                            &rng.junk(30),
                        ),
                        9 => [
                            &[0x81, text.len().min(125) as u8][..],
                            &text.as_bytes()[..text.len().min(125)],
                        ]
                        .concat(),
                        10 => rng.junk(40),
                        _ => [
                            masked_frame(
                                0x81,
                                b"451-[\"message\",{\"_placeholder\":true,\"num\":0}]",
                            ),
                            masked_frame(0x82, &rng.bytes(10)),
                        ]
                        .concat(),
                    };
                    let _ = ws.write_all(&bytes);
                    if rng.chance(50) {
                        drain(&mut ws, Duration::from_millis(2));
                    }
                }
                if rng.chance(50) {
                    let _ = ws.shutdown(std::net::Shutdown::Write);
                }
                drain(&mut ws, BRIEF);
            }
            8 => {
                let Ok(mut stream) = TcpStream::connect(addr) else {
                    continue;
                };
                let resume = format!("Last-Event-ID: {}\r\n", rng.below(40));
                let open = request_bytes(
                    "GET",
                    "/socket.io/?EIO=4&transport=sse",
                    if rng.chance(20) { &resume } else { "" },
                    b"",
                );
                let _ = stream.write_all(&open);
                let Some(sid) = sid_in(&drain(&mut stream, Duration::from_millis(100))) else {
                    continue;
                };
                let q = format!("/socket.io/?EIO=4&transport=sse&sid={sid}");
                for _ in 0..1 + rng.below(5) {
                    let post = request_bytes("POST", &q, "", eio_payload(&mut rng).as_bytes());
                    exchange(addr, &post, PATIENCE);
                }
                if rng.chance(30) {
                    drop(stream);
                    exchange(addr, &request_bytes("GET", &q, &resume, b""), BRIEF);
                } else {
                    drain(&mut stream, BRIEF);
                }
            }
            _ => {
                let q = format!("/socket.io/?EIO=4&transport=polling&sid={other}");
                let requests = [
                    request_bytes("GET", "/socket.io/?EIO=3&transport=polling", "", b""),
                    request_bytes("GET", &format!("{q}&sid=x"), "", b""),
                    request_bytes(
                        "POST",
                        &q,
                        "Transfer-Encoding: chunked\r\n",
                        b"5\r\n40/mo\r\n0\r\n\r\n",
                    ),
                    request_bytes("OPTIONS", &q, "Origin: http://elsewhere\r\n", b""),
                    request_bytes("GET", "/%zz%00?%%%", "", b""),
                    request_bytes(
                        "GET",
                        &q.replace("polling", "websocket"),
                        "Upgrade: websocket\r\n",
                        b"",
                    ),
                    rng.junk(200),
                ];
                exchange(addr, &requests[rng.below(requests.len())], BRIEF);
            }
        }
    }
}

#[test]
fn random_traffic_on_every_transport_leaves_no_thread_or_session_behind() {
    // Short timeouts so that every abandoned session ends soon; small limits so that the
    // traffic reaches them; a small send buffer so that writer threads start.
    let mut server = Server::start(&[
        "--ping-interval",
        "1000",
        "--ping-timeout",
        "1000",
        "--connect-timeout",
        "500",
        "--idle-timeout",
        "1000",
        "--header-timeout",
        "500",
        "--max-queue-packets",
        "32",
        "--max-pending-acks",
        "4",
        "--max-rooms",
        "3",
        "--max-namespaces",
        "2",
        "--max-packets",
        "8",
        "--sse-replay",
        "8",
        "--socket-send-buffer",
        "4096",
    ]);
    let before = server.threads_and_fds();
    let sids = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8u64)
        .map(|i| {
            let (addr, sids) = (server.addr.clone(), sids.clone());
            std::thread::spawn(move || chaos_client(&addr, 0x9e37_79b9 + i, 100, &sids))
        })
        .collect();

    // Meanwhile a normal client, in a room of its own, stays connected and keeps seeing its
    // own chat.
    let mut ws = ws_in(&server.addr, "/movies");
    ws_send(&mut ws, "42/movies,1[\"identify\",\"survivor\"]");
    ws_until(&mut ws, |t| t.starts_with("43/movies,1"));
    ws_send(&mut ws, "42/movies,2[\"join\",\"Quiet Room\"]");
    ws_until(&mut ws, |t| t.starts_with("43/movies,2"));
    let mut round = 0;
    while round == 0 || clients.iter().any(|c| !c.is_finished()) {
        let text = format!("round {round}");
        ws_send(
            &mut ws,
            &format!("42/movies,[\"chat\",\"Quiet Room\",\"{text}\"]"),
        );
        ws_until(&mut ws, |t| t.contains("\"chat\"") && t.contains(&text));
        round += 1;
    }
    drop(ws);
    for c in clients {
        c.join().unwrap();
    }

    // Every session ends at a timeout at the latest: no session, thread or fd outlives it.
    let settled = || {
        // Counted before the request, whose own thread may still be ending after it.
        let threads_and_fds = server.threads_and_fds();
        let (status, _, body) = http(&server.addr, "GET", "/health", &[], b"");
        let health = String::from_utf8_lossy(&body).into_owned();
        (status, health, threads_and_fds)
    };
    let deadline = Instant::now() + PATIENCE;
    let mut now = settled();
    while (now.0 != 200 || !now.1.contains("\"sessions\":0") || now.2 != before)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        now = settled();
    }
    assert_eq!(now.0, 200);
    assert!(now.1.contains("\"sessions\":0"), "{}", now.1);
    assert_eq!(now.2, before, "threads and fds back to where they started");
    // The traffic reached sessions on every transport, upgrades among them.
    let log = server.log_text();
    for reached in [
        " polling from ",
        " websocket from ",
        " sse from ",
        "upgrade ",
    ] {
        assert!(log.contains(reached), "no {reached:?} in the log");
    }
    server.assert_healthy();
}
