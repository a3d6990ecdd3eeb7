// The /movies app (PROTOCOL.md §4) through the official socket.io-client@4.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startServer, next } from "./server.mjs";

let server;
before(async () => (server = await startServer()));
after(async () => {
  assert.equal(server.panicked(), false);
  await server.stop();
});

const sockets = [];
async function movies(opts = {}, base = server.url) {
  const s = io(base + "/movies", { forceNew: true, reconnection: false, transports: ["websocket"], ...opts });
  sockets.push(s);
  const [state] = await next(s, "on_connect");
  return [s, state];
}
test.afterEach(() => {
  while (sockets.length) sockets.pop().close();
});
const ask = (s, ...args) => s.timeout(10_000).emitWithAck(...args);
/** The next `online` announcement whose user list satisfies `pred`. */
const onlineWith = (s, pred) =>
  new Promise((resolve) => {
    const check = (o) => pred(o.users) && (s.off("online", check), resolve(o));
    s.on("online", check);
  });

test("connect answers on_connect; identify validates names and logs them", async () => {
  const [s, state] = await movies();
  assert.equal(state.logged_in, false);
  for (const [bad, error] of [["", /empty/], ["   ", /empty/], ["x".repeat(33), /longer than 32/], ["a\u0007b", /control/], [42, /must be a string/]]) {
    const r = await ask(s, "identify", bad);
    assert.equal(r.ok, false, JSON.stringify(bad));
    assert.match(r.error, error);
  }
  assert.deepEqual(await ask(s, "identify", "  Ada  "), { ok: true, username: "Ada" });
  await server.waitLog("Identify: Ada");
});

test("the session from on_connect, sent as CONNECT payload, logs a later connection in", async () => {
  const [first, state] = await movies();
  assert.match(state.session, /^[0-9a-f-]{36}$/);
  await ask(first, "identify", "Grace");
  first.close();
  const [, again] = await movies({ auth: { session: state.session } });
  assert.deepEqual(again, { logged_in: true, username: "Grace" });
});

test("chat reaches the room's members, sender included, and no one else", async () => {
  const [a] = await movies();
  const [b] = await movies({ transports: ["polling"] });
  const [c] = await movies();
  await ask(a, "identify", "ann");
  await ask(b, "identify", "ben");
  await ask(c, "identify", "cy");
  assert.equal((await ask(a, "join", "Metropolis")).ok, true);
  const joinedB = await ask(b, "join", "Metropolis");
  assert.deepEqual(joinedB.users, ["ann", "ben"]);
  await ask(c, "join", "Alien");
  let cGot = false;
  c.on("chat", () => (cGot = true));
  const gotA = next(a, "chat");
  const gotB = next(b, "chat");
  assert.deepEqual(await ask(a, "chat", "Metropolis", "the robot!"), { ok: true, delivered: 2 });
  for (const [m] of [await gotA, await gotB]) {
    assert.equal(m.room, "Metropolis");
    assert.equal(m.text, "the robot!");
    assert.equal(m.from, "ann");
  }
  // c's own chat comes after anything sent to it earlier.
  const gotC = next(c, "chat");
  await ask(c, "chat", "Alien", "quiet here");
  assert.equal((await gotC)[0].text, "quiet here");
  assert.equal(cGot, true);
  c.off("chat");
});

test("refusals come back through the ack: chat to a room the sender is not in, before identify, bad rooms", async () => {
  const [s] = await movies();
  assert.deepEqual(await ask(s, "chat", "Alien", "hi"), { ok: false, error: "identify first" });
  await ask(s, "identify", "dee");
  assert.deepEqual(await ask(s, "chat", "Alien", "hi"), { ok: false, error: "not in room Alien" });
  await ask(s, "join", "Alien");
  assert.equal((await ask(s, "chat", "Alien", "   ")).ok, false);
  assert.equal((await ask(s, "join", "")).ok, false);
  assert.deepEqual(await ask(s, "leave", "Casablanca"), { ok: false, error: "not in room Casablanca" });
  assert.deepEqual(await ask(s, "leave", "Alien"), { ok: true, room: "Alien" });
  assert.deepEqual(await ask(s, "chat", "Alien", "hi"), { ok: false, error: "not in room Alien" });
});

test("a chat line may span lines and hold tabs; other control characters are refused", async () => {
  const [s] = await movies();
  await ask(s, "identify", "eve");
  await ask(s, "join", "Vertigo");
  const got = next(s, "chat");
  assert.deepEqual(await ask(s, "chat", "Vertigo", "first line\n\tsecond line\r\nthird"), { ok: true, delivered: 1 });
  assert.equal((await got)[0].text, "first line\n\tsecond line\r\nthird");
  assert.deepEqual(await ask(s, "chat", "Vertigo", "bell\u0007"), { ok: false, error: "text holds control characters" });
  assert.deepEqual(await ask(s, "identify", "eve\nadam"), { ok: false, error: "username holds control characters" });
});

/** Two identified clients in `room`, once the first has heard the second arrive (and what it heard). */
async function pairIn(room, first, second) {
  const [a] = await movies();
  const [b] = await movies();
  await ask(a, "identify", first);
  await ask(b, "identify", second);
  await ask(a, "join", room);
  const arrived = onlineWith(a, (users) => users.includes(second));
  await ask(b, "join", room);
  return [a, b, await arrived];
}

test("who is online per room follows joins, leaves and disconnects", async () => {
  const [a, b, seen] = await pairIn("Casablanca", "eve", "fay");
  assert.deepEqual(seen, { room: "Casablanca", users: ["eve", "fay"] });
  const left = onlineWith(a, (users) => !users.includes("fay"));
  b.close();
  assert.deepEqual(await left, { room: "Casablanca", users: ["eve"] });
  assert.deepEqual(await ask(a, "online", "Casablanca"), { ok: true, room: "Casablanca", users: ["eve"] });
});

test("presence is announced on a change only: a repeated join or identify sends the room nothing", async () => {
  const [a, b] = await pairIn("Vertigo", "hal", "ida");
  const heard = [];
  a.on("online", (o) => heard.push(o.users));
  assert.equal((await ask(b, "join", "Vertigo")).ok, true);
  assert.equal((await ask(b, "identify", "ida")).ok, true);
  // A real change comes after them on the same connection, so any announcement of theirs
  // would have arrived first.
  const renamed = onlineWith(a, (users) => users.includes("jo"));
  await ask(b, "identify", "jo");
  await renamed;
  assert.deepEqual(heard, [["hal", "jo"]]);
  a.off("online");
});

test("a rename is announced in the rooms of every socket of the session (another tab's too)", async () => {
  const [tab1, state] = await movies();
  const [tab2] = await movies({ auth: { session: state.session } });
  const [other] = await movies();
  await ask(tab1, "identify", "kim");
  await ask(other, "identify", "lou");
  await ask(tab1, "join", "Psycho");
  await ask(tab2, "join", "Notorious");
  const joined = onlineWith(other, (users) => users.includes("lou"));
  await ask(other, "join", "Notorious");
  assert.deepEqual(await joined, { room: "Notorious", users: ["kim", "lou"] });
  const renamed = onlineWith(other, (users) => users.includes("kit"));
  await ask(tab1, "identify", "kit");
  assert.deepEqual(await renamed, { room: "Notorious", users: ["kit", "lou"] });
});

test("a presence list carries at most --max-online-names names; `more` counts the rest", async () => {
  const small = await startServer(["--max-online-names", "2"]);
  try {
    const [a, b, c] = await Promise.all(["cat", "abe", "bea"].map(async (name) => {
      const [s] = await movies({}, small.url);
      await ask(s, "identify", name);
      return s;
    }));
    await ask(a, "join", "Rope");
    await ask(b, "join", "Rope");
    const crowded = onlineWith(a, (users) => users.includes("bea"));
    assert.deepEqual(await ask(c, "join", "Rope"), { ok: true, room: "Rope", users: ["abe", "bea"], more: 1 });
    assert.deepEqual(await crowded, { room: "Rope", users: ["abe", "bea"], more: 1 });
    assert.deepEqual(await ask(a, "online", "Rope"), { ok: true, room: "Rope", users: ["abe", "bea"], more: 1 });
    // Back within the bound, the list is whole again and `more` is gone.
    const thinned = onlineWith(a, (users) => !users.includes("abe"));
    await ask(b, "leave", "Rope");
    assert.deepEqual(await thinned, { room: "Rope", users: ["bea", "cat"] });
    assert.equal(small.panicked(), false);
  } finally {
    await small.stop();
  }
});
