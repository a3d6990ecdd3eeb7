// index.html in headless Chromium (playwright-core + Debian's chromium), against the real server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { io } from "socket.io-client";
import { startServer } from "./server.mjs";

const CHROMIUM = execSync("command -v chromium || true", { shell: "/bin/bash" }).toString().trim();
const skip = CHROMIUM ? false : "chromium is not installed here (CI's .ci/run installs it)";
const ARTIFACTS = new URL("../artifacts/", import.meta.url).pathname;
const PAGE_FILE = new URL("../../index.html", import.meta.url).pathname;

let server, browser;
before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});
after(async () => {
  if (skip) return;
  await browser.close();
  assert.equal(server.panicked(), false);
  await server.stop();
});

/** Console errors of each page opened (a failed load, a script error). */
const consoleErrors = new Map();
async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  consoleErrors.set(page, []);
  page.on("console", (m) => m.type() === "error" && consoleErrors.get(page).push(m.text()));
  page.on("pageerror", (e) => consoleErrors.get(page).push(e.message));
  await page.goto(url);
  await connected(page);
  return page;
}
const connected = (page) => page.waitForSelector('#status[data-state="connected"]');
async function name(page, who) {
  await page.fill("#name", who);
  await page.click("#identify");
  await page.waitForFunction((w) => document.getElementById("whoami").textContent === w, who);
}
async function join(page, room) {
  await page.click(`button[data-room="${room}"]`);
  await page.waitForSelector(`button[data-room="${room}"]:text("Leave")`);
}
async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}
const line = (page, text) => page.locator(".msg .text", { hasText: text }).waitFor();

test("two people in one movie see each other's chat; a third in another sees nothing; reload keeps the name", { skip }, async () => {
  const alice = await open(server.url + "/");
  const bob = await open(server.url + "/");
  const carol = await open(server.url + "/");
  await name(alice, "alice");
  await name(bob, "bob");
  await name(carol, "carol");
  await join(alice, "Metropolis");
  await join(bob, "Metropolis");
  await join(carol, "Alien");
  await alice.waitForSelector('#online b:text("bob")');
  await say(alice, "hello from alice");
  await line(bob, "hello from alice");
  await say(bob, "hi alice, bob here");
  await line(alice, "hi alice, bob here");
  // Carol's own line arrives after anything sent to her before it: she must have only hers.
  await say(carol, "anyone watching Alien?");
  await line(carol, "anyone watching Alien?");
  assert.equal(await carol.locator(".msg").count(), 1);
  for (const page of [alice, bob, carol]) assert.deepEqual(consoleErrors.get(page), []);
  mkdirSync(ARTIFACTS, { recursive: true });
  await alice.screenshot({ path: ARTIFACTS + "page.png" });
  // Reload: the session cookie brings the name back (logged_in).
  await alice.reload();
  await connected(alice);
  await alice.waitForFunction(() => document.getElementById("whoami").textContent === "alice");
});

for (const transport of ["websocket", "sse", "polling"]) {
  test(`forced transport ${transport} works`, { skip }, async () => {
    const page = await open(`${server.url}/?transport=${transport}`);
    assert.equal(await page.getAttribute("#status", "data-transport"), transport);
    await name(page, `via-${transport}`);
    await join(page, "Casablanca");
    await say(page, `over ${transport}`);
    await line(page, `over ${transport}`);
    await page.context().close();
  });
}

test("the page opened from a file:// URL works against the server", { skip }, async () => {
  const page = await open(`file://${PAGE_FILE}?server=${encodeURIComponent(server.url)}`);
  await name(page, "from-disk");
  await join(page, "Amélie");
  await say(page, "opened from disk");
  await line(page, "opened from disk");
  // No cookie from a file:// page: the session travels in the CONNECT payload instead.
  await page.reload();
  await connected(page);
  await page.waitForFunction(() => document.getElementById("whoami").textContent === "from-disk");
  await page.context().close();
});

test("a presence list cut at --max-online-names shows how many more are in the room", { skip }, async () => {
  const small = await startServer(["--max-online-names", "1"]);
  try {
    const [ann, ben] = [await open(small.url + "/"), await open(small.url + "/")];
    await name(ann, "ann");
    await name(ben, "ben");
    await join(ann, "Alien");
    await join(ben, "Alien");
    await ann.waitForFunction(() => document.getElementById("online").textContent === "Online: ann and 1 more");
    await ann.context().close();
    await ben.context().close();
    assert.equal(small.panicked(), false);
  } finally {
    await small.stop();
  }
});

test("after a server restart the page is back in its rooms under the name it had", { skip }, async () => {
  const first = await startServer();
  const page = await open(first.url + "/");
  await name(page, "phoenix");
  await join(page, "Metropolis");
  await first.stop(); // its user table goes with it
  await page.waitForSelector('#status:not([data-state="connected"])');
  // The same port, as a restarted server has: the last --port given wins.
  const second = await startServer(["--port", new URL(first.url).port]);
  try {
    await connected(page);
    await second.waitLog("Identify: phoenix");
    await page.waitForSelector('#online b:text("phoenix")');
    await say(page, "back again");
    await line(page, "back again");
    await page.context().close();
    assert.equal(second.panicked(), false);
  } finally {
    await second.stop();
  }
});

test("on a phone-sized screen, joining a movie brings its chat into view", { skip }, async () => {
  const page = await open(server.url + "/");
  await page.setViewportSize({ width: 390, height: 700 });
  await name(page, "pocket");
  await join(page, "Spirited Away");
  await page.waitForFunction(() => {
    const box = document.getElementById("text").getBoundingClientRect();
    return box.top >= 0 && box.bottom <= window.innerHeight;
  });
  await page.context().close();
});

test("a line for a room that is not shown counts on its tab until the tab is opened", { skip }, async () => {
  const [amy, ben] = [await open(server.url + "/"), await open(server.url + "/")];
  await name(amy, "amy");
  await name(ben, "ben");
  await join(amy, "Casablanca");
  await join(amy, "The Third Man"); // shown now
  await join(ben, "Casablanca");
  await say(ben, "here's looking at you");
  const tab = amy.locator(".tab", { hasText: "Casablanca" });
  await tab.locator(".unread", { hasText: "1" }).waitFor();
  await tab.click();
  await line(amy, "here's looking at you");
  assert.equal(await tab.locator(".unread").count(), 0);
  await amy.context().close();
  await ben.context().close();
});

test("a busy room keeps its last 500 lines on the page", { skip }, async () => {
  const page = await open(server.url + "/");
  await name(page, "reader");
  await join(page, "Amélie");
  const talker = io(server.url + "/movies", { forceNew: true, reconnection: false, transports: ["websocket"] });
  try {
    await new Promise((resolve) => talker.once("on_connect", resolve));
    await talker.emitWithAck("identify", "talker");
    await talker.emitWithAck("join", "Amélie");
    for (let i = 1; i <= 520; i++) await talker.emitWithAck("chat", "Amélie", `line ${i}`);
    await line(page, "line 520");
    assert.equal(await page.locator("#log > *").count(), 500);
    assert.equal(await page.locator(".msg .text", { hasText: /^line 21$/ }).count(), 1, "the oldest kept");
    assert.equal(await page.locator(".msg .text", { hasText: /^line 20$/ }).count(), 0);
  } finally {
    talker.close();
    await page.context().close();
  }
});
