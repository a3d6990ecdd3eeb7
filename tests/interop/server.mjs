// Starts the real tinysio binary on a free port for the interop tests, and reads its log.
import { spawn } from "node:child_process";
import { once } from "node:events";
import assert from "node:assert/strict";

const BIN = process.env.TINYSIO_BIN || new URL("../../target/debug/tinysio", import.meta.url).pathname;

export async function startServer(args = []) {
  const child = spawn(BIN, ["--port", "0", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  const lines = [];
  const waiters = [];
  let buffered = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    buffered += chunk;
    let at;
    while ((at = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, at);
      buffered = buffered.slice(at + 1);
      lines.push(line);
      for (const w of [...waiters]) {
        if (line.includes(w.needle)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  const waitLog = (needle) => {
    const seen = lines.find((l) => l.includes(needle));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => waiters.push({ needle, resolve }));
  };
  const first = await waitLog("listening on http://");
  const url = first.match(/http:\/\/[^\s]+/)[0];
  return {
    url,
    lines,
    waitLog,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGKILL");
        await once(child, "exit");
      }
    },
    panicked: () => lines.some((l) => l.includes("panicked")),
  };
}

/** Resolves with the arguments of the next `event` on `emitter`. */
export function next(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

// Seeded random arguments of every kind the client can send: strings with astral characters,
// lone surrogates, noncharacters, U+2028 and NUL; integers up to 2^64 and the float extremes;
// nested arrays and objects with numeric, empty and non-ASCII keys; Buffers at any depth.
// (Objects shaped like the protocol's own `{_placeholder: true}`, and `__proto__` keys, are
// left out: the client itself mangles those.)
export function randomArgs(seed) {
  let x = seed;
  const rnd = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), (x >>> 0) / 2 ** 32);
  const pick = (a) => a[Math.floor(rnd() * a.length)];
  const pieces = ["a", "é", "😀", "\ud83d", "\ude00", "\u2028", "\u0000", '"', "\\", "\n", "\u{10ffff}", "\ufffe", "𝄞"];
  const text = () => Array.from({ length: Math.floor(rnd() * 6) }, () => pick(pieces)).join("");
  const numbers = [0, 1, -1, 2 ** 53, 2 ** 53 + 2, -(2 ** 63), 2 ** 64, 1e21, 1e-7, 5e-324, Number.MAX_VALUE, 0.1];
  const value = (depth) => {
    switch (Math.floor(rnd() * (depth > 3 ? 4 : 6))) {
      case 0: return text();
      case 1: return pick(numbers);
      case 2: return pick([true, false, null]);
      case 3: return Buffer.from(text());
      case 4: return Array.from({ length: Math.floor(rnd() * 4) }, () => value(depth + 1));
      default: return Object.fromEntries(Array.from({ length: Math.floor(rnd() * 4) }, () => [pick(["a", "", "10", "2", "😀", text()]), value(depth + 1)]));
    }
  };
  return Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => value(0));
}

// What JSON and UTF-8 make of a value on its way: a lone surrogate becomes U+FFFD.
const utf8 = (s) => Buffer.from(s).toString();
export function asSent(v) {
  if (Buffer.isBuffer(v)) return Buffer.from(v);
  if (typeof v === "string") return utf8(v);
  if (Array.isArray(v)) return v.map(asSent);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [utf8(k), asSent(x)]));
  return v;
}

/** Emits 200 seeded `randomArgs` on `s` (connected to `/`); each must be acked as sent. */
export async function roundTripsRandomArgs(s, label) {
  for (let seed = 1; seed <= 200; seed++) {
    const args = randomArgs(seed * 2654435761);
    const acked = await Promise.race([
      new Promise((resolve) => s.emit("message-with-ack", ...args, (...a) => resolve(a))),
      next(s, "disconnect").then(([reason]) => assert.fail(`${label}, seed ${seed}: disconnected (${reason})`)),
    ]);
    assert.deepStrictEqual(asSent(acked), asSent(args), `${label}, seed ${seed}`);
  }
}
