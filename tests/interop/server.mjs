// Starts the real tinysio binary on a free port for the interop tests, and reads its log.
import { spawn } from "node:child_process";
import { once } from "node:events";

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
