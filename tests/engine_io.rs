//! Engine.IO v4 behaviour of the real binary, over raw HTTP and WebSocket (PROTOCOL.md §1).
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn handshake_has_exactly_the_documented_keys_in_order() {
    let server = Server::start(&[]);
    let (status, headers, body) = http(
        &server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; charset=UTF-8")
    );
    let text = String::from_utf8(body).unwrap();
    let open: serde_json::Value = serde_json::from_str(&text[1..]).unwrap();
    let keys: Vec<&String> = open.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "sid",
            "upgrades",
            "pingInterval",
            "pingTimeout",
            "maxPayload"
        ]
    );
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(
        (open["pingInterval"].as_u64(), open["pingTimeout"].as_u64()),
        (Some(25000), Some(20000))
    );
    assert_eq!(open["maxPayload"].as_u64(), Some(1_000_000));
    assert!(
        open["sid"].as_str().unwrap().len() >= 32,
        "sid carries 122 random bits"
    );
}

#[test]
fn every_error_code_has_its_status_and_exact_message() {
    let server = Server::start(&[]);
    let p = "/socket.io/";
    for (method, query, headers, status, body) in [
        (
            "GET",
            "?EIO=4",
            vec![],
            400,
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
        (
            "GET",
            "?EIO=4&transport=carrier-pigeon",
            vec![],
            400,
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
        (
            "GET",
            "?EIO=4&transport=polling&sid=nope",
            vec![],
            400,
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
        (
            "POST",
            "?EIO=4&transport=polling",
            vec![],
            400,
            r#"{"code":2,"message":"Bad handshake method"}"#,
        ),
        (
            "GET",
            "?EIO=4&transport=websocket",
            vec![],
            400,
            r#"{"code":3,"message":"Bad request"}"#,
        ),
        (
            "GET",
            "?EIO=4&transport=polling",
            vec![("Origin", "http://evil.example")],
            403,
            r#"{"code":4,"message":"Forbidden"}"#,
        ),
        (
            "GET",
            "?transport=polling",
            vec![],
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "GET",
            "?EIO=3&transport=polling",
            vec![],
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "GET",
            "?EIO=x&transport=polling",
            vec![],
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
    ] {
        let (got, hdrs, got_body) =
            http(&server.addr, method, &format!("{p}{query}"), &headers, b"");
        assert_eq!(
            (got, String::from_utf8(got_body).unwrap().as_str()),
            (status, body),
            "{method} {query}"
        );
        assert_eq!(header(&hdrs, "content-type"), Some("application/json"));
    }
    // A transport that does not match the session: code 3.
    let s = Polling::open(&server, p);
    let (status, _, body) = http(
        &server.addr,
        "POST",
        &format!("{p}?EIO=4&transport=sse&sid={}", s.sid),
        &[],
        b"40",
    );
    assert_eq!(
        (status, String::from_utf8(body).unwrap()),
        (400, r#"{"code":3,"message":"Bad request"}"#.into())
    );
}

#[test]
fn polling_round_trip_with_text_and_binary() {
    let server = Server::start(&[]);
    let s = Polling::open(&server, "/engine.io/");
    assert_eq!(s.post("4hello\x1e4€\x1ebAQIDBA=="), (200, "ok".into()));
    assert_eq!(s.packets(), ["4hello", "4€", "bAQIDBA=="]);
}

#[test]
fn a_get_read_after_the_clients_close_gets_the_noop_once() {
    // A client's GET and its close may go out together on two connections (the official
    // suite's "forcefully closes the session" does so); whichever the server reads first,
    // that GET gets the noop.
    let server = Server::start(&[]);
    let s = Polling::open(&server, "/engine.io/");
    assert_eq!(s.post("1"), (200, "ok".into()));
    assert_eq!(s.get(), (200, "6".into()), "the GET sent with the close");
    assert_eq!(s.get().0, 400, "a closed session is forgotten");
    // Only the client's own close owes it: a session the server closed is just unknown.
    let s = Polling::open(&server, "/engine.io/");
    assert_eq!(s.post("x").0, 400);
    assert_eq!(s.get().0, 400);
}

#[test]
fn a_client_close_releases_the_pending_get_with_a_noop() {
    let server = Server::start(&["--log-level", "debug"]);
    let s = Polling::open(&server, "/engine.io/");
    let pending = s.get_in_background();
    server.wait_log(&format!("{} GET waits", s.sid));
    assert_eq!(s.post("1"), (200, "ok".into()));
    let (status, body) = pending.join().unwrap();
    assert_eq!(
        (status, body),
        (200, b"6".to_vec()),
        "as the reference server answers"
    );
    assert_eq!(s.get().0, 400, "a closed session is forgotten");
}

#[test]
fn websocket_session_from_the_start() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]).unwrap();
    let open = ws_text(&mut ws);
    assert!(open.starts_with("0{\"sid\":"), "{open}");
    assert!(open.contains("\"upgrades\":[]"), "{open}");
    ws_send(&mut ws, "4héllo");
    assert_eq!(ws_text(&mut ws), "4héllo");
    ws.send(Message::binary(vec![0u8, 1, 255])).unwrap();
    assert_eq!(ws_binary(&mut ws), [0, 1, 255]);
    ws_send(&mut ws, "1");
    server.wait_log("websocket from");
    server.wait_log(": client close");
}

#[test]
fn upgrade_from_polling_flushes_queued_packets_in_order() {
    let server = Server::start(&[]);
    let s = Polling::open(&server, "/engine.io/");
    // A GET is pending when the upgrade starts; the probe must release it with a noop.
    let pending = s.get_in_background();
    let mut ws = ws_connect(
        &server.addr,
        &format!("/engine.io/?EIO=4&transport=websocket&sid={}", s.sid),
        &[],
    )
    .unwrap();
    ws_send(&mut ws, "2probe");
    assert_eq!(ws_text(&mut ws), "3probe");
    let (status, body) = pending.join().unwrap();
    assert_eq!((status, body), (200, b"6".to_vec()));
    // Packets sent before the client says `5` are queued, then flushed over the WebSocket.
    assert_eq!(s.post("4first\x1e4second"), (200, "ok".into()));
    ws_send(&mut ws, "5");
    assert_eq!(ws_text(&mut ws), "4first");
    assert_eq!(ws_text(&mut ws), "4second");
    ws_send(&mut ws, "4third");
    assert_eq!(ws_text(&mut ws), "4third");
    // After the upgrade, polling on that sid is a bad request; a second WebSocket is opened
    // and closed at once (1008), as the reference server does, and the first one carries on.
    assert_eq!(s.get().0, 400);
    let mut second = ws_connect(
        &server.addr,
        &format!("/engine.io/?EIO=4&transport=websocket&sid={}", s.sid),
        &[],
    )
    .unwrap();
    match second.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("a second WebSocket on an upgraded sid is closed: {other:?}"),
    }
    ws_send(&mut ws, "4fourth");
    assert_eq!(ws_text(&mut ws), "4fourth");
    server.wait_log("upgrade");
}

/// Joins `/` on a polling session and reads up to its `auth` greeting.
fn join_root(s: &Polling) {
    assert_eq!(s.post("40"), (200, "ok".into()));
    s.until(|p| p.starts_with("42[\"auth\""));
}

#[test]
fn leaving_the_last_namespace_releases_the_pending_get() {
    // Pings far off, so only the release can answer the GET within the test's patience.
    let server = Server::start(&["--log-level", "debug", "--ping-interval", "60000"]);
    let s = Polling::open(&server, "/socket.io/");
    join_root(&s);
    let pending = s.get_in_background();
    server.wait_log(&format!("{} GET waits", s.sid));
    assert_eq!(s.post("41"), (200, "ok".into()));
    let (status, body) = pending.join().unwrap();
    assert_eq!((status, body), (200, b"6".to_vec()));
    // Until it joins a namespace again, a GET is answered at once (python-socketio may send
    // one more after its noop, and then no close packet).
    assert_eq!(s.get(), (200, "6".into()));
    join_root(&s);
    let held = s.get_in_background();
    server.wait_log_nth(&format!("{} GET waits", s.sid), 2);
    assert_eq!(s.post("1"), (200, "ok".into()));
    assert_eq!(held.join().unwrap(), (200, b"6".to_vec()));
}

#[test]
fn a_session_that_leaves_its_last_namespace_has_the_connect_timeout_again() {
    let server = Server::start(&["--connect-timeout", "1000", "--ping-interval", "60000"]);
    let s = Polling::open(&server, "/socket.io/");
    join_root(&s);
    assert_eq!(s.post("41"), (200, "ok".into()));
    let line = server.wait_log(&format!("close {} polling", s.sid));
    assert!(
        line.ends_with("connect timeout (no namespace joined)"),
        "{line}"
    );
}

/// A kept-alive connection whose thread already waits for its next request.
fn kept_alive(server: &Server) -> TcpStream {
    let mut keep = TcpStream::connect(&server.addr).unwrap();
    keep.set_read_timeout(Some(PATIENCE)).unwrap();
    keep.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while parse_response(&raw).is_none_or(|r| r.body.is_empty()) {
        let n = keep.read(&mut buf).unwrap();
        assert!(n > 0, "health answer cut short");
        raw.extend_from_slice(&buf[..n]);
    }
    keep
}

/// A polling session, the WebSocket that will upgrade it, and a kept-alive connection whose
/// thread waits to read a GET for it.
fn upgrade_race(server: &Server) -> (Polling, Ws, TcpStream) {
    let s = Polling::open(server, "/engine.io/");
    let path = format!("/engine.io/?EIO=4&transport=websocket&sid={}", s.sid);
    let ws = ws_connect(&server.addr, &path, &[]).unwrap();
    let keep = kept_alive(server);
    (s, ws, keep)
}

/// The status of a GET for `s` sent at once on `keep`.
fn get_at_once(keep: &mut TcpStream, s: &Polling) -> u16 {
    let get = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        s.query()
    );
    keep.write_all(get.as_bytes()).unwrap();
    read_response(keep).status
}

#[test]
fn a_get_sent_after_probe_and_upgrade_is_refused_even_when_it_is_read_first() {
    let server = Server::start(&[]);
    let (s, mut ws, mut keep) = upgrade_race(&server);
    // `2probe` and `5` in one segment, then at once a GET on that connection, which the
    // server may well read before the WebSocket's frames: they are still handled first, so
    // the GET comes after the upgrade (400), as on a server with one event loop.
    let mut frames = masked_frame(0x81, b"2probe");
    frames.extend(masked_frame(0x81, b"5"));
    ws.get_mut().write_all(&frames).unwrap();
    assert_eq!(get_at_once(&mut keep, &s), 400);
    assert_eq!(ws_text(&mut ws), "3probe");
    ws_send(&mut ws, "4after");
    assert_eq!(ws_text(&mut ws), "4after");
}

#[test]
fn a_get_sent_after_an_upgrade_packet_of_its_own_is_refused_even_when_it_is_read_first() {
    let server = Server::start(&["--log-level", "debug"]);
    let (s, mut ws, mut keep) = upgrade_race(&server);
    // This time the old transport's noop is out before the `5` comes, in a segment of its
    // own, just before a GET on another connection: the GET still waits for the `5`.
    ws_send(&mut ws, "2probe");
    assert_eq!(ws_text(&mut ws), "3probe");
    server.wait_log(&format!("{} probed: the old transport got its noop", s.sid));
    ws.get_mut().write_all(&masked_frame(0x81, b"5")).unwrap();
    assert_eq!(get_at_once(&mut keep, &s), 400);
    ws_send(&mut ws, "4after");
    assert_eq!(ws_text(&mut ws), "4after");
}

#[test]
fn a_second_websocket_during_a_probe_waits_for_it_then_is_closed() {
    let server = Server::start(&["--log-level", "debug"]);
    let s = Polling::open(&server, "/engine.io/");
    let path = format!("/engine.io/?EIO=4&transport=websocket&sid={}", s.sid);
    let mut first = ws_connect(&server.addr, &path, &[]).unwrap();
    let second = {
        let (addr, path) = (server.addr.clone(), path.clone());
        std::thread::spawn(move || {
            let mut second = ws_connect(&addr, &path, &[]).unwrap();
            second.read()
        })
    };
    server.wait_log(&format!("{} a second websocket waits for the probe", s.sid));
    let mut frames = masked_frame(0x81, b"2probe");
    frames.extend(masked_frame(0x81, b"5"));
    first.get_mut().write_all(&frames).unwrap();
    match second.join().unwrap() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("a second WebSocket for one session is closed: {other:?}"),
    }
    assert_eq!(ws_text(&mut first), "3probe");
    ws_send(&mut first, "4after");
    assert_eq!(ws_text(&mut first), "4after");
}

#[test]
fn ping_timeout_closes_the_session_and_pongs_keep_it() {
    let server = Server::start(&["--ping-interval", "300", "--ping-timeout", "200"]);
    let alive = Polling::open(&server, "/engine.io/");
    let dead = Polling::open(&server, "/engine.io/");
    let keeper = std::thread::spawn(move || {
        for _ in 0..4 {
            assert_eq!(alive.packets(), ["2"]);
            assert_eq!(alive.post("3"), (200, "ok".into()));
        }
        alive
    });
    assert_eq!(dead.packets(), ["2"]);
    // No pong: the pending GET is answered with the close packet once the deadline passes.
    assert_eq!(dead.packets(), ["1"]);
    let line = server.wait_log(&format!("close {} polling", dead.sid));
    assert!(line.ends_with(": ping timeout"), "{line}");
    assert_eq!(dead.get().0, 400);
    let alive = keeper.join().unwrap();
    assert_eq!(alive.packets(), ["2"], "the ponging session lives on");
}

#[test]
fn ping_timeout_closes_a_silent_websocket_too() {
    let server = Server::start(&["--ping-interval", "200", "--ping-timeout", "100"]);
    let mut ws = ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    assert_eq!(ws_text(&mut ws), "2");
    assert_eq!(ws_text(&mut ws), "1", "closed with a close packet");
    server.wait_log("websocket from 127.0.0.1");
    server.wait_log(": ping timeout");
}

#[test]
fn second_pending_get_closes_session() {
    let server = Server::start(&[]);
    let s = Polling::open(&server, "/engine.io/");
    let mut first = TcpStream::connect(&server.addr).unwrap();
    write!(
        first,
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        s.query()
    )
    .unwrap();
    // Which of the two the server reads first is up to the scheduler: that one is pending,
    // the other is the duplicate. Either way the duplicate gets 400 and the pending one gets
    // the close packet.
    let (status, body) = s.get();
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    let r = read_response(&mut first);
    let mut outcomes = [
        (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        (status, body),
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            (200, "1".to_string()),
            (400, r#"{"code":3,"message":"Bad request"}"#.to_string())
        ]
    );
    assert_eq!(s.get().0, 400);
}

#[test]
fn client_dropping_a_pending_get_is_noticed() {
    let server = Server::start(&[]);
    let s = Polling::open(&server, "/engine.io/");
    {
        let mut tcp = TcpStream::connect(&server.addr).unwrap();
        write!(tcp, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", s.query()).unwrap();
        tcp.flush().unwrap();
    } // dropped: FIN while the GET waits
    server.wait_log(&format!("close {} polling from 127.0.0.1", s.sid));
    assert!(server.log_text().contains("pending GET dropped"));
    assert_eq!(s.get().0, 400);
}

#[test]
fn oversize_post_gets_413_and_closes_the_session() {
    let server = Server::start(&["--max-payload", "1000"]);
    let s = Polling::open(&server, "/engine.io/");
    assert_eq!(s.open["maxPayload"], 1000);
    let big = format!("4{}", "x".repeat(2000));
    let (status, _) = s.post(&big);
    assert_eq!(status, 413);
    server.wait_log("payload too large");
    assert_eq!(s.get().0, 400);
}

#[test]
fn a_post_that_expects_100_continue_is_told_to_send_its_body() {
    // As curl does for large bodies: the head alone first, the body only after `100 Continue`
    // (curl would otherwise wait a second of its own).
    let server = Server::start(&["--max-payload", "1000"]);
    let s = Polling::open(&server, "/engine.io/");
    let post_head = |len: usize| {
        let mut tcp = TcpStream::connect(&server.addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n\
             Content-Length: {len}\r\n\r\n",
            s.query()
        );
        tcp.write_all(head.as_bytes()).unwrap();
        tcp
    };
    let mut tcp = post_head(4);
    let mut interim = [0u8; 25];
    tcp.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    tcp.write_all(b"4abc").unwrap();
    let answer = read_response(&mut tcp);
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"ok"[..]));
    // A body over the limit gets the final answer at once, and is never asked for.
    assert_eq!(read_response(&mut post_head(5000)).status, 413);
}

#[test]
fn oversize_websocket_message_closes_with_1009() {
    let server = Server::start(&["--max-payload", "1000"]);
    let mut ws = ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    ws_send(&mut ws, &format!("4{}", "x".repeat(5000)));
    let code = loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => break u16::from(frame.code),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    assert_eq!(code, 1009);
    server.wait_log("payload too large");
}

#[test]
fn a_client_close_frame_is_answered_with_one() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    ws.close(None).unwrap();
    // tungstenite hands the reply up once, then reports the handshake complete.
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("expected the close handshake to complete, got {e}"),
        }
    }
}

#[test]
fn malformed_packets_close_the_session() {
    let server = Server::start(&[]);
    for bad in ["9", "", "bnot*base64", "2"] {
        let s = Polling::open(&server, "/engine.io/");
        let (status, body) = s.post(bad);
        assert_eq!(
            (status, body.as_str()),
            (400, r#"{"code":3,"message":"Bad request"}"#),
            "{bad:?}"
        );
        assert_eq!(s.get().0, 400, "{bad:?} closed the session");
    }
    let mut ws = ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    ws_send(&mut ws, "x");
    assert_eq!(ws_until(&mut ws, |t| t == "1"), "1");
    server.wait_log("parse error: unknown Engine.IO packet type");
}

#[test]
fn origins_are_checked_on_polling_and_websocket() {
    let server = Server::start(&[]);
    let own = format!("http://{}", server.addr);
    let (status, headers) = handshake_from(&server.addr, "/socket.io/", &own);
    assert_eq!(
        (status, header(&headers, "access-control-allow-origin")),
        (200, Some(own.as_str()))
    );
    assert_eq!(
        header(&headers, "access-control-allow-credentials"),
        Some("true")
    );
    let (status, headers) = handshake_from(&server.addr, "/socket.io/", "null");
    assert_eq!(
        (status, header(&headers, "access-control-allow-origin")),
        (200, Some("null"))
    );
    let evil = [("Origin", "http://evil.example")];
    match ws_connect(&server.addr, "/socket.io/?EIO=4&transport=websocket", &evil) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let (status, _, _) = http(
        &server.addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &evil,
        b"",
    );
    assert_eq!(status, 403);

    let open = Server::start(&["--allowed-origins", "*"]);
    let (status, headers) = handshake_from(&open.addr, "/socket.io/", "http://evil.example");
    assert_eq!(
        (status, header(&headers, "access-control-allow-origin")),
        (200, Some("http://evil.example"))
    );
    let other = [("Origin", "http://a.example")];
    assert!(ws_connect(&open.addr, "/socket.io/?EIO=4&transport=websocket", &other).is_ok());
}

/// A polling handshake sent with an Origin: the status and the response headers.
fn handshake_from(addr: &str, path: &str, origin: &str) -> (u16, Vec<(String, String)>) {
    let (status, headers, _) = http(
        addr,
        "GET",
        &format!("{path}?EIO=4&transport=polling"),
        &[("Origin", origin)],
        b"",
    );
    (status, headers)
}

#[test]
fn a_thousand_sessions_leave_no_threads_or_fds_behind() {
    let mut server = Server::start(&[]);
    // Before any client: the accept, timers and signals threads and the listener. Nothing
    // made later may outlive its connection.
    let before = server.threads_and_fds();
    for i in 0..1000 {
        if i % 2 == 0 {
            let s = Polling::open(&server, "/engine.io/");
            assert_eq!(s.post("4x"), (200, "ok".into()));
            assert_eq!(s.post("1"), (200, "ok".into()));
        } else {
            let mut ws =
                ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]).unwrap();
            ws_text(&mut ws);
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
    }
    // Connection threads end as their peers go; wait (bounded) for the counts to settle.
    let deadline = Instant::now() + PATIENCE;
    let mut now = server.threads_and_fds();
    while now != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        now = server.threads_and_fds();
    }
    assert_eq!(now, before, "threads and fds back to where they started");
    let (status, _, body) = http(&server.addr, "GET", "/health", &[], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains("\"sessions\":0"));
    server.assert_healthy();
}

/// The scheduling policy of each of the server's threads (field 41 of /proc/PID/task/T/stat).
fn thread_policies(server: &Server) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .map(|stat| {
            // Fields after the parenthesised name; policy is field 41, the 39th after it.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(38).unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn connection_threads_run_under_the_chosen_policy_and_the_others_do_not() {
    const NORMAL: u32 = 0;
    const BATCH: u32 = 3;
    for (flag, connection_policy) in [("batch", BATCH), ("normal", NORMAL)] {
        let server = Server::start(&["--thread-policy", flag]);
        let before = thread_policies(&server);
        assert!(before.iter().all(|&p| p == NORMAL), "{flag}: {before:?}");
        let mut ws =
            ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]).unwrap();
        ws_text(&mut ws);
        let mut during = thread_policies(&server);
        during.sort();
        let mut want = before.clone();
        want.push(connection_policy);
        want.sort();
        assert_eq!(
            during, want,
            "{flag}: one connection thread more, under {connection_policy}"
        );
    }
}

#[test]
fn a_connection_flood_beyond_the_cap_gets_503_and_the_server_serves_afterwards() {
    let mut server = Server::start(&["--max-connections", "20"]);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let mut tcp = TcpStream::connect(&server.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 512];
        match tcp.read(&mut buf) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                assert!(text.contains("Retry-After: 1"), "{text}");
                refused += 1;
            }
            _ => held.push(tcp), // admitted: the server waits for a request
        }
    }
    assert_eq!(held.len(), 20, "exactly the cap is admitted");
    assert_eq!(refused, 40);
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _, _) = http(&server.addr, "GET", "/health", &[], b"");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "server never recovered");
    }
    let s = Polling::open(&server, "/engine.io/");
    assert_eq!(s.post("4back"), (200, "ok".into()));
    assert_eq!(s.packets(), ["4back"]);
    server.assert_healthy();
}

#[test]
fn handshakes_beyond_the_session_cap_get_503_until_a_session_closes() {
    let server = Server::start(&["--max-sessions", "2"]);
    let a = Polling::open(&server, "/engine.io/");
    let _b = Polling::open(&server, "/engine.io/");
    let (status, headers, body) = http(
        &server.addr,
        "GET",
        "/engine.io/?EIO=4&transport=polling",
        &[],
        b"",
    );
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(body, b"server busy: too many sessions");
    // A WebSocket from the start is a session too.
    let refused = ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]);
    assert!(
        matches!(&refused, Err(tungstenite::Error::Http(r)) if r.status() == 503),
        "{refused:?}"
    );
    // The sessions already open are served as before; one that closes frees its place.
    assert_eq!(a.post("4still"), (200, "ok".into()));
    assert_eq!(a.packets(), ["4still"]);
    assert_eq!(a.post("1"), (200, "ok".into()));
    let c = Polling::open(&server, "/engine.io/");
    assert_eq!(c.post("4in"), (200, "ok".into()));
    assert_eq!(c.packets(), ["4in"]);
}

#[test]
fn the_accept_loop_survives_running_out_of_file_descriptors() {
    let mut server = Server::start_with_fd_limit(&[], 32);
    // Hold connections until the server's descriptors run out: accept then fails with
    // EMFILE, which must be logged and waited out, not fatal.
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    server.wait_log("accept: Too many open files");
    drop(held);
    // Once descriptors are free again the server serves as before.
    let deadline = Instant::now() + PATIENCE;
    let s = loop {
        let (status, _, body) = http(
            &server.addr,
            "GET",
            "/engine.io/?EIO=4&transport=polling",
            &[],
            b"",
        );
        if status == 200 {
            break String::from_utf8(body).unwrap();
        }
        assert!(Instant::now() < deadline, "server never recovered");
    };
    assert!(s.starts_with("0{"), "{s}");
    server.assert_healthy();
}

#[test]
fn the_conformance_profile_is_what_the_official_suites_expect() {
    let server = Server::start(&["--conformance"]);
    let s = Polling::open(&server, "/socket.io/");
    assert_eq!(
        (
            s.open["pingInterval"].as_u64(),
            s.open["pingTimeout"].as_u64()
        ),
        (Some(300), Some(200))
    );
    assert_eq!(s.open["maxPayload"].as_u64(), Some(1_000_000));
    assert_eq!(s.post("40/custom,{\"token\":\"t\"}"), (200, "ok".into()));
    let auth = s.until(|p| p.starts_with("42/custom,"));
    assert_eq!(auth, r#"42/custom,["auth",{"token":"t"}]"#);
    assert_eq!(s.post("40/movies,"), (200, "ok".into()));
    assert_eq!(
        s.until(|p| p.starts_with("44")),
        r#"44/movies,{"message":"Invalid namespace"}"#
    );
    // Any origin, and the raw Engine.IO echo.
    let (status, headers) = handshake_from(&server.addr, "/engine.io/", "http://suite.example");
    assert_eq!(
        (status, header(&headers, "access-control-allow-origin")),
        (200, Some("http://suite.example"))
    );
    let raw = Polling::open(&server, "/engine.io/");
    assert_eq!(raw.post("4echo\x1ebAQI="), (200, "ok".into()));
    assert_eq!(raw.packets(), ["4echo", "bAQI="]);
    // `emit-with-ack` on `/`: the server asks for an ack (the socket's first id is 1) and
    // emits what the ack carried, binary attachments included.
    let mut ws = ws_in(&server.addr, "/");
    ws_send(&mut ws, r#"42["emit-with-ack",1,"2",{"3":[true]}]"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"421["emit-with-ack",1,"2",{"3":[true]}]"#
    );
    ws_send(&mut ws, r#"431[1,"2",{"3":[true]}]"#);
    assert_eq!(
        ws_text(&mut ws),
        r#"42["emit-with-ack",1,"2",{"3":[true]}]"#
    );
    let bins = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1},"test""#;
    ws_send(&mut ws, &format!(r#"452-["emit-with-ack",{bins}]"#));
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    ws.send(Message::binary(vec![4u8, 5, 6])).unwrap();
    assert_eq!(
        ws_text(&mut ws),
        format!(r#"452-2["emit-with-ack",{bins}]"#)
    );
    assert_eq!(ws_binary(&mut ws), [1, 2, 3]);
    assert_eq!(ws_binary(&mut ws), [4, 5, 6]);
    ws_send(&mut ws, &format!(r#"462-2[{bins}]"#));
    ws.send(Message::binary(vec![7u8])).unwrap();
    ws.send(Message::binary(vec![8u8])).unwrap();
    assert_eq!(ws_text(&mut ws), format!(r#"452-["emit-with-ack",{bins}]"#));
    assert_eq!(ws_binary(&mut ws), [7]);
    assert_eq!(ws_binary(&mut ws), [8]);
}

#[test]
fn instances_share_nothing_and_a_taken_port_is_a_clear_error() {
    let (a, b) = (Server::start(&[]), Server::start(&[]));
    let s = Polling::open(&a, "/engine.io/");
    assert_eq!(s.post("4on a"), (200, "ok".into()));
    let (status, _, body) = http(&b.addr, "GET", &s.query(), &[], b"");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#.into()),
        "a session lives on the instance that made it: a load balancer must route its requests there"
    );
    assert_eq!(s.packets(), ["4on a"], "and there it goes on as before");

    let port = a.addr.rsplit(':').next().unwrap();
    let taken = std::process::Command::new(env!("CARGO_BIN_EXE_tinysio"))
        .args(["--port", port])
        .output()
        .unwrap();
    assert_eq!(taken.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen on {}: Address already in use",
            a.addr
        )),
        "{stderr}"
    );
    assert_eq!(s.post("4still a"), (200, "ok".into()));
    assert_eq!(
        s.packets(),
        ["4still a"],
        "the instance on that port serves on"
    );
}

/// The CPUs the calling thread may run on (main.rs's unit tests have the same `affinity`;
/// a black-box test cannot reach the binary's code).
fn my_cpus() -> Vec<usize> {
    // SAFETY: the zeroed set is filled by the kernel; pid 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size_of_val(&set), &mut set), 0);
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Lets thread `tid` (0: the calling one) run on `cpu` only.
fn pin(tid: i32, cpu: usize) {
    // SAFETY: the zeroed set gets one CPU; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(tid, size_of_val(&set), &set), 0);
    }
}

/// The thread of the server named `name`, and the CPUs it may run on.
fn server_thread(server: &Server, name: &str) -> (i32, String) {
    for task in std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap() {
        let path = task.unwrap().path();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        if status.lines().next() == Some(&format!("Name:\t{name}")) {
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:\t"));
            let tid = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
            return (tid, allowed.unwrap().to_string());
        }
    }
    panic!("no thread named {name}");
}

#[test]
fn a_websocket_thread_woken_on_its_local_peers_cpu_leaves_that_cpu_under_batch() {
    let cpus = my_cpus();
    if cpus.len() < 2 {
        return eprintln!("skipped: one CPU, nowhere to move");
    }
    std::thread::spawn(move || {
        for (policy, moves) in [("batch", true), ("normal", false)] {
            let server = Server::start(&["--thread-policy", policy]);
            // More WebSockets than CPUs: their threads block in `recv` instead of polling.
            let mut all: Vec<_> = (0..=cpus.len())
                .map(|_| {
                    let mut ws =
                        ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[])
                            .unwrap();
                    ws_text(&mut ws);
                    ws
                })
                .collect();
            let ws = &mut all[0];
            let peer = ws.get_ref().local_addr().unwrap().to_string();
            let name = &peer[peer.len().saturating_sub(15)..];
            // The client sends from cpus[0], and the server's thread reads there.
            pin(0, cpus[0]);
            pin(server_thread(&server, name).0, cpus[0]);
            // It looks at least every 32nd wake.
            for i in 0..33 {
                ws_send(ws, &format!("4echo {i}"));
                assert_eq!(ws_text(ws), format!("4echo {i}"));
            }
            let allowed = server_thread(&server, name).1;
            let want = if moves {
                let rest: Vec<_> = cpus[1..].iter().map(|c| c.to_string()).collect();
                rest.join(",")
            } else {
                cpus[0].to_string()
            };
            // The kernel writes runs of CPUs as ranges ("1-3"); compare as sets.
            assert_eq!(expand(&allowed), expand(&want), "{policy}: {allowed}");
        }
    })
    .join()
    .unwrap();
}

/// "0,2-4" as [0, 2, 3, 4].
fn expand(list: &str) -> Vec<usize> {
    list.split(',')
        .flat_map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            a.parse().unwrap()..=b.parse().unwrap()
        })
        .collect()
}

#[test]
fn a_connection_thread_is_named_after_its_peer() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server.addr, "/engine.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    let peer = ws.get_ref().local_addr().unwrap().to_string();
    let want = &peer[peer.len().saturating_sub(15)..]; // the kernel keeps 15 bytes
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_string())
        .collect();
    assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
}

#[test]
fn the_soft_limit_on_open_files_is_raised_to_the_hard_one() {
    // A desktop's default soft limit (1024) would refuse connections long before
    // --max-connections; the server takes what the hard limit allows.
    let mut server = Server::start_with_fd_limits(&[], 64, 256);
    server.wait_log("open files limit raised from 64 to 256");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["256", "256"], "{open_files}");
    server.assert_healthy();
}
