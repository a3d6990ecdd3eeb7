// Interop with the official socket.io-client@4 (PROTOCOL.md §2, §4 echo service).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startServer, next, roundTripsRandomArgs } from "./server.mjs";

let server;
before(async () => {
  server = await startServer(["--max-payload", "100000"]);
});
after(async () => {
  assert.equal(server.panicked(), false, "the server never panicked");
  await server.stop();
});

const sockets = [];
function client(nsp = "/", opts = {}) {
  const s = io(server.url + nsp, { forceNew: true, reconnection: false, ...opts });
  sockets.push(s);
  return s;
}
test.afterEach(() => {
  while (sockets.length) sockets.pop().close();
});

for (const [name, opts] of [
  ["websocket only", { transports: ["websocket"] }],
  ["polling only", { transports: ["polling"], upgrade: false }],
]) {
  test(`${name}: connects, auth payload echoed, events and acks`, async () => {
    const s = client("/", { ...opts, auth: { token: "abc", n: 1 } });
    const [auth] = await next(s, "auth");
    assert.deepEqual(auth, { token: "abc", n: 1 });
    assert.equal(s.io.engine.transport.name, opts.transports[0]);
    s.emit("message", "hi", { a: [1, 2] });
    assert.deepEqual(await next(s, "message-back"), ["hi", { a: [1, 2] }]);
    const acked = await new Promise((resolve) => s.emit("message-with-ack", 1, "two", { three: 3 }, (...a) => resolve(a)));
    assert.deepEqual(acked, [1, "two", { three: 3 }]);
  });
}

test("polling upgraded to websocket", async () => {
  const s = client("/");
  const upgraded = new Promise((resolve) =>
    s.io.once("open", () => {
      assert.equal(s.io.engine.transport.name, "polling", "the session opens over polling");
      s.io.engine.once("upgrade", (t) => resolve(t.name));
    }),
  );
  assert.equal(await upgraded, "websocket");
  if (!s.connected) await next(s, "connect");
  assert.equal(s.io.engine.transport.name, "websocket");
  s.emit("message", "after upgrade");
  assert.deepEqual(await next(s, "message-back"), ["after upgrade"]);
});

test("100 events arrive in order", async () => {
  for (const transports of [["websocket"], ["polling"]]) {
    const s = client("/", { transports });
    await next(s, "connect");
    const got = [];
    const done = new Promise((resolve) => s.on("message-back", (i) => { got.push(i); if (got.length === 100) resolve(); }));
    for (let i = 0; i < 100; i++) s.emit("message", i);
    await done;
    assert.deepEqual(got, [...Array(100).keys()]);
  }
});

test("server-to-client ack, answered and timed out", async () => {
  const s = client("/", { transports: ["websocket"] });
  await next(s, "connect");
  s.on("ack-me", (...args) => {
    const cb = args.pop();
    if (args[0] !== "ignore me") cb("got", ...args);
  });
  s.emit("server-ack", 5000, "hello", { x: 1 });
  assert.deepEqual(await next(s, "server-ack-result"), [{ ok: true, args: ["got", "hello", { x: 1 }] }]);
  s.emit("server-ack", 100, "ignore me");
  assert.deepEqual(await next(s, "server-ack-result"), [{ ok: false, error: "timeout" }]);
});

test("binary attachments, several and nested, byte-exact as event and as ack", async () => {
  for (const transports of [["websocket"], ["polling"]]) {
    const s = client("/", { transports });
    await next(s, "connect");
    const all = Buffer.from([...Array(256).keys()]);
    const payload = [Buffer.from([1, 2, 3]), { nested: { a: Buffer.from([4, 5]), list: [Buffer.from([]), all] }, n: 7 }];
    s.emit("message", ...payload);
    const back = await next(s, "message-back");
    assert.deepEqual(back.map(normalize), payload.map(normalize));
    const acked = await new Promise((resolve) => s.emit("message-with-ack", ...payload, (...a) => resolve(a)));
    assert.deepEqual(acked.map(normalize), payload.map(normalize));
    // A binary ack from the client to a server-side ack request.
    s.on("ack-me", (...args) => args.pop()(Buffer.from([9, 9])));
    s.emit("server-ack", 5000);
    const [result] = await next(s, "server-ack-result");
    assert.equal(result.ok, true);
    assert.deepEqual(normalize(result.args[0]), [9, 9]);
  }
});

/** Buffers and ArrayBuffers as plain byte arrays, recursively, to compare content. */
function normalize(v) {
  if (v instanceof ArrayBuffer) return [...new Uint8Array(v)];
  if (ArrayBuffer.isView(v)) return [...new Uint8Array(v.buffer, v.byteOffset, v.byteLength)];
  if (Array.isArray(v)) return v.map(normalize);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalize(x)]));
  return v;
}

test("two namespaces on one connection", async () => {
  const root = io(server.url, { forceNew: true, reconnection: false, transports: ["websocket"] });
  const movies = root.io.socket("/movies");
  sockets.push(root, movies);
  const rootAuth = next(root, "auth");
  const moviesState = next(movies, "on_connect");
  movies.connect();
  const [state] = await moviesState;
  assert.equal(state.logged_in, false);
  await rootAuth;
  assert.equal(root.io, movies.io, "one Manager, one Engine.IO connection");
  root.emit("message", "root");
  assert.deepEqual(await next(root, "message-back"), ["root"]);
  movies.disconnect(); // leaves /movies, keeps /
  root.emit("message", "still here");
  assert.deepEqual(await next(root, "message-back"), ["still here"]);
});

test("a string cut inside an emoji (a lone surrogate) comes back with U+FFFD, the session open", async () => {
  for (const transports of [["websocket"], ["polling"]]) {
    const s = client("/", { transports, upgrade: false });
    await next(s, "connect");
    const cut = "ab😀".slice(0, 3); // "ab\ud83d": JSON.stringify sends the half as an escape
    const acked = await Promise.race([
      new Promise((resolve) => s.emit("message-with-ack", cut, "😀", (...a) => resolve(a))),
      next(s, "disconnect").then(([reason]) => assert.fail(`${transports}: disconnected (${reason})`)),
    ]);
    assert.deepEqual(acked, ["ab\ufffd", "😀"]);
    s.emit("message", "still open");
    assert.deepEqual(await next(s, "message-back"), ["still open"]);
  }
});

test("unknown namespace gets Invalid namespace", async () => {
  const s = client("/random", { transports: ["websocket"] });
  const [err] = await next(s, "connect_error");
  assert.equal(err.message, "Invalid namespace");
});

test("a payload over maxPayload disconnects that client and no other", async () => {
  const big = client("/", { transports: ["websocket"] });
  const other = client("/", { transports: ["websocket"] });
  const polled = client("/", { transports: ["polling"] });
  await Promise.all([next(big, "connect"), next(other, "connect"), next(polled, "connect")]);
  big.emit("message", "x".repeat(200_000));
  const [reason] = await next(big, "disconnect");
  assert.match(reason, /transport (close|error)/);
  polled.emit("message", "y".repeat(200_000));
  const [reason2] = await next(polled, "disconnect");
  assert.match(reason2, /transport (close|error)/);
  other.emit("message", "fine");
  assert.deepEqual(await next(other, "message-back"), ["fine"]);
});

test("reconnect after the server disconnects it", async () => {
  const s = client("/", { transports: ["websocket"] });
  await next(s, "connect");
  const firstId = s.id;
  s.emit("disconnect-me");
  assert.deepEqual(await next(s, "disconnect"), ["io server disconnect", undefined]);
  s.connect();
  await next(s, "connect");
  assert.notEqual(s.id, firstId);
  s.emit("message", "back");
  assert.deepEqual(await next(s, "message-back"), ["back"]);
});

test("a dropped connection reconnects on its own as a new socket, and what was emitted meanwhile arrives", async () => {
  const s = client("/", { transports: ["websocket"], reconnection: true, reconnectionDelay: 1000, reconnectionDelayMax: 1000 });
  const other = client("/", { transports: ["websocket"] });
  await Promise.all([next(s, "connect"), next(other, "connect")]);
  const firstId = s.id;
  s.io.engine.transport.ws._socket.destroy(); // the TCP connection drops, no close packet
  const [reason] = await next(s, "disconnect");
  assert.equal(reason, "transport close");
  s.emit("message", "sent while down");
  // While it is down, the server sends to every socket; the first one is gone, so that is lost.
  other.emit("broadcast", "while down");
  other.emit("message", "sync");
  await next(other, "message-back");
  let replayed = false;
  s.on("broadcast", () => (replayed = true));
  await next(s, "connect");
  assert.notEqual(s.id, firstId);
  assert.ok(!s.recovered, "no connection state recovery: the CONNECT reply offers no pid");
  assert.deepEqual(await next(s, "message-back"), ["sent while down"]);
  assert.equal(replayed, false, "what the server sent meanwhile is not replayed");
});

test("broadcast reaches every other socket, not the sender", async () => {
  const [a, b, c] = [client("/"), client("/", { transports: ["websocket"] }), client("/", { transports: ["polling"] })];
  await Promise.all([a, b, c].map((s) => next(s, "connect")));
  let senderGot = false;
  a.on("broadcast", () => (senderGot = true));
  a.emit("broadcast", "to all");
  assert.deepEqual(await next(b, "broadcast"), ["to all"]);
  assert.deepEqual(await next(c, "broadcast"), ["to all"]);
  a.emit("message", "sync");
  await next(a, "message-back");
  assert.equal(senderGot, false);
});

test("random arguments of every kind come back from the echo as sent, on both transports", async () => {
  for (const transports of [["websocket"], ["polling"]]) {
    const s = client("/", { transports, upgrade: false });
    await next(s, "connect");
    await roundTripsRandomArgs(s, transports[0]);
  }
});
