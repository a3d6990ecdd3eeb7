//! Hostile clients (issue: limits, back-pressure, fuzzing): every attack is answered with a
//! clear HTTP error or a protocol close, the process never panics, and afterwards a normal
//! client connects and chats.
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

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
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        tcp,
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
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
