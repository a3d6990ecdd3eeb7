// The served SSE transport plugged into the official socket.io-client@4 under Node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io, NodeXHR, NodeWebSocket } from "socket.io-client";
import EventSource from "eventsource";
import { startServer, next, roundTripsRandomArgs } from "./server.mjs";

let server, SSE;
before(async () => {
  server = await startServer();
  // Import the transport exactly as the server serves it.
  const res = await fetch(`${server.url}/socket.io/sse.js`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /javascript/);
  const source = await res.text();
  const { sseTransport } = await import("data:text/javascript," + encodeURIComponent(source));
  SSE = sseTransport(NodeXHR, EventSource);
});
after(async () => {
  assert.equal(server.panicked(), false);
  await server.stop();
});

const sockets = [];
function client(opts) {
  const s = io(server.url, { forceNew: true, reconnection: false, ...opts });
  sockets.push(s);
  return s;
}
test.afterEach(() => {
  while (sockets.length) sockets.pop().close();
});

test("WebSocket disabled: connects over SSE, emits, receives acks and binary", async () => {
  const s = client({ transports: [SSE, NodeXHR], upgrade: false, auth: { via: "sse" } });
  const [auth] = await next(s, "auth");
  assert.deepEqual(auth, { via: "sse" });
  assert.equal(s.io.engine.transport.name, "sse");
  s.emit("message", "over sse");
  assert.deepEqual(await next(s, "message-back"), ["over sse"]);
  const acked = await s.timeout(10_000).emitWithAck("message-with-ack", { n: 1 });
  assert.deepEqual(acked, { n: 1 });
  const bytes = Buffer.from([0, 1, 2, 253, 254, 255]);
  s.emit("message", { file: bytes });
  const [back] = await next(s, "message-back");
  assert.deepEqual([...new Uint8Array(back.file)], [...bytes]);
  s.on("ack-me", (x, cb) => cb("sse client acks", x));
  s.emit("server-ack", 5000, 42);
  assert.deepEqual(await next(s, "server-ack-result"), [{ ok: true, args: ["sse client acks", 42] }]);
});

test("WebSocket blocked: WebSocket -> SSE fallback with one line of options", async () => {
  // The WebSocket path leads nowhere (as behind a proxy that blocks it); SSE takes over.
  const s = client({
    transports: [NodeWebSocket, SSE, NodeXHR],
    tryAllTransports: true,
    transportOptions: { websocket: { path: "/blocked/" } },
  });
  await next(s, "auth");
  assert.equal(s.io.engine.transport.name, "sse");
  assert.deepEqual(await s.timeout(10_000).emitWithAck("message-with-ack", "fell back"), "fell back");
});

test("SSE upgrades to WebSocket when it can", async () => {
  const s = client({ transports: [SSE, NodeWebSocket] });
  const upgraded = new Promise((resolve) =>
    s.io.once("open", () => {
      assert.equal(s.io.engine.transport.name, "sse");
      s.io.engine.once("upgrade", (t) => resolve(t.name));
    }),
  );
  assert.equal(await upgraded, "websocket");
  if (!s.connected) await next(s, "connect");
  const got = [];
  const done = new Promise((resolve) => s.on("message-back", (i) => { got.push(i); if (got.length === 50) resolve(); }));
  for (let i = 0; i < 50; i++) s.emit("message", i);
  await done;
  assert.deepEqual(got, [...Array(50).keys()], "nothing lost or reordered across the upgrade");
});

test("random arguments of every kind come back from the echo as sent over SSE", async () => {
  const s = client({ transports: [SSE, NodeXHR], upgrade: false });
  await next(s, "connect");
  assert.equal(s.io.engine.transport.name, "sse");
  await roundTripsRandomArgs(s, "sse");
});
