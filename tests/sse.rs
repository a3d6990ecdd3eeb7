//! The SSE transport (PROTOCOL.md §3) over raw sockets: EventSource down, POST up.
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

/// Reads SSE events off a raw HTTP response stream.
struct Stream {
    tcp: TcpStream,
    buf: Vec<u8>,
    pub status: u16,
    pub head: String,
}

impl Stream {
    fn open(addr: &str, query: &str, last_event_id: Option<&str>) -> Stream {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let extra = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            tcp,
            "GET {query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        )
        .unwrap();
        let mut s = Stream {
            tcp,
            buf: Vec::new(),
            status: 0,
            head: String::new(),
        };
        let end = s.fill_until(b"\r\n\r\n").expect("response head");
        s.head = String::from_utf8_lossy(&s.buf[..end]).into();
        s.status = s.head.split(' ').nth(1).unwrap().parse().unwrap();
        s.buf.drain(..end + 4);
        s
    }

    /// Reads until `marker` is buffered; returns its offset, or None at EOF.
    fn fill_until(&mut self, marker: &[u8]) -> Option<usize> {
        loop {
            if let Some(at) = self.buf.windows(marker.len()).position(|w| w == marker) {
                return Some(at);
            }
            let mut chunk = [0u8; 4096];
            match self.tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next event as (id, data); comments (keep-alives) are skipped. None at EOF.
    fn event(&mut self) -> Option<(String, String)> {
        loop {
            let end = self.fill_until(b"\n\n")?;
            let block = String::from_utf8(self.buf[..end].to_vec()).unwrap();
            self.buf.drain(..end + 2);
            let (mut id, mut data) = (String::new(), Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.into();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            if !data.is_empty() {
                return Some((id, data.join("\n")));
            }
        }
    }

    fn data(&mut self) -> String {
        self.event().expect("an event").1
    }
}

fn post(addr: &str, path: &str, sid: &str, body: &str) -> u16 {
    http(
        addr,
        "POST",
        &format!("{path}?EIO=4&transport=sse&sid={sid}"),
        &[],
        body.as_bytes(),
    )
    .0
}

fn sid_of(open: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    v["sid"].as_str().unwrap().into()
}

#[test]
fn sse_alone_carries_a_whole_socket_io_session() {
    let server = Server::start(&["--ping-interval", "400", "--ping-timeout", "2000"]);
    let mut s = Stream::open(&server.addr, "/socket.io/?EIO=4&transport=sse", None);
    assert_eq!(s.status, 200);
    assert!(
        s.head.contains("Content-Type: text/event-stream"),
        "{}",
        s.head
    );
    assert!(s.head.contains("Cache-Control: no-cache"), "{}", s.head);
    assert!(
        s.head.contains("X-Accel-Buffering: no"),
        "a proxy such as nginx must pass the stream on unbuffered: {}",
        s.head
    );
    let (id, open) = s.event().unwrap();
    let sid = sid_of(&open);
    assert_eq!(id, format!("{sid}:0"), "ids are <sid>:<n>, from 0");
    assert!(open.contains("\"upgrades\":[\"websocket\"]"), "{open}");
    let a = &server.addr;
    assert_eq!(post(a, "/socket.io/", &sid, "40"), 200);
    assert!(s.data().starts_with("40{\"sid\":"));
    assert_eq!(s.data(), "42[\"auth\",{}]");
    assert_eq!(
        post(
            a,
            "/socket.io/",
            &sid,
            "42[\"message\",\"hi\"]\x1e421[\"message-with-ack\",\"x\"]"
        ),
        200
    );
    assert_eq!(s.data(), "42[\"message-back\",\"hi\"]");
    assert_eq!(s.data(), "431[\"x\"]");
    // Binary: one attachment, base64 in both directions.
    let bin = "451-[\"message\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID";
    assert_eq!(post(a, "/socket.io/", &sid, bin), 200);
    assert_eq!(
        s.data(),
        "451-[\"message-back\",{\"_placeholder\":true,\"num\":0}]"
    );
    assert_eq!(s.data(), "bAQID");
    // Heartbeat over SSE: a ping, answered by POST, and the session lives on.
    assert_eq!(s.data(), "2");
    assert_eq!(post(a, "/socket.io/", &sid, "3"), 200);
    assert_eq!(s.data(), "2");
    assert_eq!(post(a, "/socket.io/", &sid, "3"), 200);
    // Close from the client: the stream ends with the close packet, the sid is forgotten.
    assert_eq!(post(a, "/socket.io/", &sid, "1"), 200);
    assert_eq!(s.data(), "1");
    assert!(s.event().is_none(), "the stream ends");
    assert_eq!(post(a, "/socket.io/", &sid, "40"), 400);
}

#[test]
fn resume_with_last_event_id_delivers_every_packet_once_in_order() {
    let server = Server::start(&[]);
    let mut s = Stream::open(&server.addr, "/engine.io/?EIO=4&transport=sse", None);
    let (_, open) = s.event().unwrap();
    let sid = sid_of(&open);
    const TOTAL: usize = 300;
    let (addr, sender_sid) = (server.addr.clone(), sid.clone());
    // The server keeps emitting (echoes of these posts) while the stream is cut and resumed.
    let sender = std::thread::spawn(move || {
        for i in 0..TOTAL {
            assert_eq!(
                post(&addr, "/engine.io/", &sender_sid, &format!("4m{i}")),
                200
            );
        }
    });
    let mut got = Vec::new();
    let mut last_id = String::new();
    while got.len() < 50 {
        let (id, data) = s.event().unwrap();
        got.push(data);
        last_id = id;
    }
    s.tcp.shutdown(Shutdown::Both).unwrap(); // the stream's TCP connection dies mid-flow
    drop(s);
    let mut resumed = Stream::open(
        &server.addr,
        "/engine.io/?EIO=4&transport=sse",
        Some(&last_id),
    );
    assert_eq!(resumed.status, 200);
    while got.len() < TOTAL {
        got.push(resumed.data());
    }
    sender.join().unwrap();
    let expected: Vec<String> = (0..TOTAL).map(|i| format!("4m{i}")).collect();
    assert_eq!(got, expected, "every packet exactly once, in order");
}

#[test]
fn a_resume_outside_the_replay_window_closes_the_session() {
    let server = Server::start(&["--sse-replay", "4"]);
    let mut s = Stream::open(&server.addr, "/engine.io/?EIO=4&transport=sse", None);
    let sid = sid_of(&s.data());
    for i in 0..10 {
        assert_eq!(
            post(&server.addr, "/engine.io/", &sid, &format!("4m{i}")),
            200
        );
        s.data();
    }
    drop(s);
    let r = Stream::open(
        &server.addr,
        "/engine.io/?EIO=4&transport=sse",
        Some(&format!("{sid}:0")),
    );
    assert_eq!(r.status, 400);
    server.wait_log("SSE resume outside the replay window");
    let unknown = Stream::open(
        &server.addr,
        "/engine.io/?EIO=4&transport=sse",
        Some("nope:3"),
    );
    assert_eq!(unknown.status, 400);
}

#[test]
fn the_replay_window_is_bounded_in_bytes_too() {
    let server = Server::start(&["--sse-replay-bytes", "1000"]);
    let query = "/engine.io/?EIO=4&transport=sse";
    let mut s = Stream::open(&server.addr, query, None);
    let sid = sid_of(&s.data());
    let big = |i: usize| format!("4{i}{}", "x".repeat(599));
    let mut ids = Vec::new();
    for i in 0..3 {
        assert_eq!(post(&server.addr, "/engine.io/", &sid, &big(i)), 200);
        let (id, data) = s.event().unwrap();
        assert_eq!(data, big(i));
        ids.push(id);
    }
    drop(s);
    // Only the last echo fits in 1000 bytes: a resume after the second gets it...
    let mut resumed = Stream::open(&server.addr, query, Some(&ids[1]));
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.data(), big(2));
    drop(resumed);
    // ...and one after the first would miss the second, so the session is closed.
    let late = Stream::open(&server.addr, query, Some(&ids[0]));
    assert_eq!(late.status, 400);
    server.wait_log("SSE resume outside the replay window");
}

#[test]
fn a_dead_stream_is_handed_to_the_ping_timeout() {
    let server = Server::start(&["--ping-interval", "200", "--ping-timeout", "200"]);
    let mut s = Stream::open(&server.addr, "/engine.io/?EIO=4&transport=sse", None);
    let sid = sid_of(&s.data());
    s.tcp.shutdown(Shutdown::Both).unwrap();
    let line = server.wait_log(&format!("close {sid} sse"));
    assert!(line.ends_with("ping timeout"), "{line}");
    assert_eq!(post(&server.addr, "/engine.io/", &sid, "4x"), 400);
}

#[test]
fn sse_upgrades_to_websocket() {
    let server = Server::start(&[]);
    let mut s = Stream::open(&server.addr, "/engine.io/?EIO=4&transport=sse", None);
    let sid = sid_of(&s.data());
    let mut ws = ws_connect(
        &server.addr,
        &format!("/engine.io/?EIO=4&transport=websocket&sid={sid}"),
        &[],
    )
    .unwrap();
    ws_send(&mut ws, "2probe");
    assert_eq!(ws_text(&mut ws), "3probe");
    assert_eq!(s.data(), "6", "the stream is told to pause with a noop");
    assert_eq!(post(&server.addr, "/engine.io/", &sid, "4queued"), 200);
    ws_send(&mut ws, "5");
    assert!(s.event().is_none(), "the SSE stream ends once upgraded");
    assert_eq!(ws_text(&mut ws), "4queued");
    ws_send(&mut ws, "4over ws");
    assert_eq!(ws_text(&mut ws), "4over ws");
    assert_eq!(
        post(&server.addr, "/engine.io/", &sid, "4x"),
        400,
        "SSE POSTs end with the upgrade"
    );
}
