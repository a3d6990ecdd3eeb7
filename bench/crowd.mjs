// Crowd: `clients` identified clients join one /movies room, one after another, each over
// WebSocket with the official client, against the release server it starts with the flags
// given after the count. Prints the `online` events the clients got, their JSON size, the
// fill's wall time and the server's CPU time (from /proc).
//   node bench/crowd.mjs 1000                               the default presence bound
//   node bench/crowd.mjs 1000 --max-online-names 1000000    whole lists
import { io } from "socket.io-client";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";

const [count = "1000", ...flags] = process.argv.slice(2);
const bin = new URL("../target/release/tinysio", import.meta.url).pathname;
const server = spawn(bin, ["--port", "0", ...flags], { stdio: ["ignore", "ignore", "pipe"] });
const url = await new Promise((resolve, reject) => {
  let log = "";
  server.stderr.on("data", (chunk) => {
    if (log === null) return; // the rest of the log (a line per identify) is not needed
    log += chunk;
    const found = log.match(/listening on (http:\/\/\S+)/);
    if (found) (log = null), resolve(found[1]);
  });
  server.on("exit", (code) => reject(new Error(`the server exited (${code}): ${log}`)));
});
const cpuSeconds = () => {
  const fields = readFileSync(`/proc/${server.pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in USER_HZ ticks
};

let events = 0, bytes = 0;
const sockets = [];
const started = Date.now();
for (let i = 0; i < Number(count); i++) {
  const s = io(url + "/movies", { transports: ["websocket"], forceNew: true, reconnection: false });
  s.on("online", (o) => { events++; bytes += JSON.stringify(o).length; });
  sockets.push(s);
  await new Promise((resolve) => s.once("on_connect", resolve));
  await s.timeout(60_000).emitWithAck("identify", `user${i}`);
  await s.timeout(60_000).emitWithAck("join", "crowd");
}
// Each join is announced to every member, the joiner included: n(n+1)/2 events in all.
const expected = (Number(count) * (Number(count) + 1)) / 2;
for (let waited = 0; events < expected && waited < 30_000; waited += 10) await new Promise((r) => setTimeout(r, 10));
const seconds = (Date.now() - started) / 1000;
console.log(JSON.stringify({ clients: Number(count), flags: flags.join(" "), online_events: events, expected, online_mb: +(bytes / 1e6).toFixed(1), fill_s: seconds, server_cpu_s: cpuSeconds() }));
for (const s of sockets) s.close();
server.kill();
process.exit(0);
