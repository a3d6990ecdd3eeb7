//! The socketioxide peer: `/` echo (auth on connect, message-back, message-with-ack) and
//! `/movies` (`join` acks {ok:true}, `chat`(room, text) goes to the room, sender included),
//! as tinysio serves them. Usage: socketioxide-peer PORT
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::SocketIo;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(5101);
    let (layer, io) = SocketIo::builder().max_payload(1_000_000).build_layer();
    io.ns("/", async |s: SocketRef, Data(auth): Data<Value>| {
        s.emit("auth", &auth).ok();
        s.on("message", async |s: SocketRef, Data(d): Data<Value>| {
            s.emit("message-back", &d).ok();
        });
        s.on("message-with-ack", async |Data(d): Data<Value>, ack: AckSender| {
            ack.send(&d).ok();
        });
    });
    io.ns("/movies", async |s: SocketRef| {
        s.emit("on_connect", &json!({ "logged_in": false })).ok();
        s.on("join", async |s: SocketRef, Data(room): Data<String>, ack: AckSender| {
            s.join(room);
            ack.send(&json!({ "ok": true })).ok();
        });
        s.on("chat", async |s: SocketRef, Data((room, text)): Data<(String, String)>| {
            let line = json!({ "room": room, "text": text });
            s.within(room).emit("chat", &line).await.ok();
        });
    });
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    println!("listening on http://127.0.0.1:{port}");
    axum::serve(listener, app).await.unwrap();
}
