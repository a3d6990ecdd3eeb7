//! One client stops reading while a hundred others receive a stream of broadcasts: the others
//! get everything, in order; the slow one is closed with its reason logged.
mod common;
use common::*;

const MESSAGES: usize = 1000;
const READERS: usize = 100;

fn join_bench(addr: &str) -> Ws {
    let mut ws = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket", &[]).unwrap();
    ws_text(&mut ws);
    ws_send(&mut ws, "40/movies,");
    ws_until(&mut ws, |t| t.starts_with("42/movies,[\"on_connect\""));
    ws_send(&mut ws, "42/movies,1[\"join\",\"bench\"]");
    ws_until(&mut ws, |t| t.starts_with("43/movies,1"));
    ws
}

#[test]
fn a_slow_consumer_is_closed_and_blocks_no_one() {
    let mut server = Server::start(&[
        "--max-queue-bytes",
        "262144",
        "--socket-send-buffer",
        "65536",
    ]);
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let mut ws = join_bench(&server.addr);
            std::thread::spawn(move || {
                let mut got = Vec::with_capacity(MESSAGES);
                while got.len() < MESSAGES {
                    let t = ws_until(&mut ws, |t| t.contains("[\"chat\","));
                    let n: usize = t
                        .split("\"text\":\"m")
                        .nth(1)
                        .unwrap()
                        .split(' ')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    got.push(n);
                }
                got
            })
        })
        .collect();
    // The slow one joins, shrinks its receive buffer, and never reads again.
    let slow = join_bench(&server.addr);
    shrink_receive_buffer(slow.get_ref());
    let mut sender = join_bench(&server.addr);
    ws_send(&mut sender, "42/movies,2[\"identify\",\"sender\"]");
    ws_until(&mut sender, |t| t.starts_with("43/movies,2"));
    let padding = "x".repeat(500);
    for i in 0..MESSAGES {
        let id = 10 + i;
        ws_send(
            &mut sender,
            &format!("42/movies,{id}[\"chat\",\"bench\",\"m{i} {padding}\"]"),
        );
        ws_until(&mut sender, |t| t.starts_with(&format!("43/movies,{id}[")));
    }
    for reader in readers {
        assert_eq!(
            reader.join().unwrap(),
            (0..MESSAGES).collect::<Vec<_>>(),
            "everything, in order"
        );
    }
    let line = server.wait_log("send backlog full");
    assert!(line.contains("close "), "{line}");
    drop(slow);
    server.assert_healthy();
}
