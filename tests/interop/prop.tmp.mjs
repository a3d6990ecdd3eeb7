import { io } from "socket.io-client";
import assert from "node:assert/strict";
const url = process.argv[2];
let seed = Number(process.argv[3] || 1);
const rnd = () => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) / 4294967296; };
const pick = (a) => a[Math.floor(rnd() * a.length)];
function str() {
  const parts = ["a", "é", "😀", "\ud83d", "\ude00", "\u2028", "\u0000", "\"", "\\", "\n", "\u{10ffff}", "\ufeff", "\ufffe", "𝄞", "<script>", "%00", "\r\n\r\n"];
  let s = ""; const n = Math.floor(rnd() * 6); for (let i = 0; i < n; i++) s += pick(parts); return s;
}
function val(d = 0) {
  const k = Math.floor(rnd() * (d > 4 ? 5 : 9));
  switch (k) {
    case 0: return str();
    case 1: return pick([0, -0, 1, -1, 2 ** 53, 2 ** 53 + 2, -(2 ** 63), 2 ** 64, 1e21, 1e-7, 5e-324, 1.7976931348623157e308, 0.1, 123456789.123456789, 1e300 * 10]);
    case 2: return pick([true, false, null]);
    case 3: return pick([NaN, undefined, new Date(0)]);
    case 4: return Buffer.from(str());
    case 5: { const a = []; const n = Math.floor(rnd() * 4); for (let i = 0; i < n; i++) a.push(val(d + 1)); return a; }
    default: { const o = {}; const n = Math.floor(rnd() * 4); for (let i = 0; i < n; i++) Object.defineProperty(o, pick(["a", "b", "", "constructor", "num", "10", "2", "😀", str()]), { value: val(d + 1), enumerable: true, writable: true, configurable: true }); return o; }
  }
}
// What the peer should get back: JSON semantics plus buffers kept.
function norm(v) {
  if (Buffer.isBuffer(v) || v instanceof Uint8Array || v instanceof ArrayBuffer) return Buffer.from(v);
  if (v === undefined || (typeof v === "number" && !isFinite(v))) return null;
  if (typeof v === "number") return v === 0 ? 0 : v;
  if (typeof v === "string") return Buffer.from(v).toString(); // lone surrogates → U+FFFD
  if (v instanceof Date) return v.toISOString();
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === "object") { const o = {}; for (const [k, x] of Object.entries(v)) { if (x !== undefined) Object.defineProperty(o, Buffer.from(k).toString(), { value: norm(x), enumerable: true, writable: true, configurable: true }); } return o; }
  return v;
}
const transports = [[process.argv[4] || "websocket"]];
const s = io(url, { transports: transports[0], reconnection: false });
await new Promise((r) => s.on("connect", r));
let bad = 0;
for (let i = 0; i < 300; i++) {
  const args = []; const n = 1 + Math.floor(rnd() * 3); for (let j = 0; j < n; j++) args.push(val());
  const got = await Promise.race([
    new Promise((r) => s.emit("message-with-ack", ...args, (...a) => r(a))),
    new Promise((r) => s.once("disconnect", (why) => r({ disconnected: why }))),
  ]);
  if (got.disconnected) { console.log("DISCONNECTED", got.disconnected, JSON.stringify(args).slice(0, 300)); process.exit(1); }
  const want = args.map(norm);
  try { assert.deepStrictEqual(got.map(norm), want); } catch (e) { bad++; if (bad < 4) console.log("DIFF", i, transports[0], e.message.slice(0, 600)); }
}
console.log("done", transports[0], "bad", bad);
s.close();
