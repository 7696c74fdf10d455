// End to end: the bundled web client in Debian's Chromium (driven by
// playwright-core) against the real server. Two guests chat, see presence,
// typing and read receipts, send a dm; the server restarts while both pages
// are open and they come back by themselves, with the message a third
// client sent during the outage shown exactly once. Screenshots of the main
// screens go to target/e2e/.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { Server, Proxy, E2E_DIR, waitFor, sleep } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const cleanups = [];
after(async () => {
  for (const f of cleanups.reverse()) {
    try {
      await f();
    } catch {}
  }
});

fs.mkdirSync(E2E_DIR, { recursive: true });
const shot = (page, name) => page.screenshot({ path: path.join(E2E_DIR, `${name}.png`) });

/** The message bodies shown with exactly this text. */
const bodies = (page, text) => page.locator("#message-list .msg-body").filter({ hasText: new RegExp(`^${escapeRe(text)}$`) });
function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

async function login(page, base, name) {
  await page.goto(`${base}/`);
  await page.waitForSelector("#guest-name");
  await page.fill("#guest-name", name);
  await page.click("#guest-form button[type=submit]");
  await page.waitForSelector('#conn[data-status="open"]');
}

async function openRoom(page, room) {
  await page.fill("#join-input", room);
  await page.press("#join-input", "Enter");
  await page.waitForFunction((r) => document.getElementById("room-title").textContent.includes(r), room);
  await page.waitForSelector("#composer:not([hidden])");
}

async function say(page, text) {
  await page.fill("#input", text);
  await page.press("#input", "Enter");
}

test("two browsers chat, dm, survive a server restart, and render payloads as text", { timeout: 240000 }, async (t) => {
  // a high rate limit: the test fills a room with history quickly
  const server = new Server({ store: "sqlite", name: "e2e", extra: ["--rate-per-sec", "1000", "--burst", "1000"] });
  await server.start();
  cleanups.push(async () => {
    await server.stop("SIGKILL");
    server.cleanup();
  });
  // the pages reach the server through a proxy, so that they can be kept
  // away while a third client publishes during the outage
  const px = await new Proxy(server.port).start();
  cleanups.push(() => px.stop());
  const base = px.http;

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
  cleanups.push(() => browser.close());
  const errors = [];
  const newPage = async (opts = {}) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...opts });
    const page = await ctx.newPage();
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("dialog", (d) => {
      errors.push(`dialog: ${d.message()}`);
      d.dismiss();
    });
    return page;
  };
  const pa = await newPage();
  const pb = await newPage({ colorScheme: "dark" });
  try {
    await scenario(t, { server, px, base, pa, pb, errors });
  } catch (e) {
    // leave a picture of the failure behind
    await shot(pa, "failure-a").catch(() => {});
    await shot(pb, "failure-b").catch(() => {});
    const state = async (p) => p.evaluate(() => document.getElementById("message-list").innerText).catch(() => "?");
    t.diagnostic(`page A:\n${await state(pa)}\npage B:\n${await state(pb)}\nserver log tail:\n${server.log.slice(-2000)}`);
    throw e;
  }
});

async function scenario(t, { server, px, base, pa, pb, errors }) {

  // ---- log in as two guests, join a room, talk
  await pa.goto(`${base}/`);
  await pa.waitForSelector("#guest-name");
  await shot(pa, "01-login");
  await login(pa, base, "Alice Liddell");
  await login(pb, base, "Bob Dylan");
  await openRoom(pa, "e2e");
  await openRoom(pb, "e2e");

  await say(pa, "Hello from Alice");
  await bodies(pb, "Hello from Alice").waitFor();
  await say(pb, "Hi Alice, Bob here");
  await say(pb, "Two messages in a row are grouped");
  await bodies(pa, "Two messages in a row are grouped").waitFor();
  assert.equal(await pa.locator("#message-list .msg.grouped").count(), 1, "consecutive messages are grouped");

  // presence
  await pa.locator(".member-name", { hasText: "Bob Dylan" }).waitFor();
  await pb.locator(".member-name", { hasText: "Alice Liddell" }).waitFor();
  assert.match(await pa.textContent("#room-sub"), /2 online/);

  // read receipts: Bob has the room open at the bottom, so he has read it
  await pa.locator(".msg-seen", { hasText: "Seen by Bob Dylan" }).waitFor();

  // typing
  await pb.type("#input", "I am typ", { delay: 30 });
  await pa.locator("#typing", { hasText: "Bob Dylan is typing" }).waitFor();
  await shot(pa, "02-room");
  await shot(pb, "03-room-dark");
  await pb.fill("#input", "");

  // ---- an HTML/script payload is shown as text
  const payload = `<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold?</b>`;
  await say(pa, payload);
  await bodies(pb, payload).waitFor();
  assert.equal(await pb.locator("#message-list img, #message-list script, #message-list .msg-body b").count(), 0);
  assert.equal(await pb.evaluate(() => window.__xss), undefined);
  assert.equal(await pa.evaluate(() => window.__xss), undefined);

  // ---- a direct message
  await pa.locator(".member", { hasText: "Bob Dylan" }).click();
  await pa.waitForFunction(() => document.getElementById("room-title").textContent.includes("Bob Dylan"));
  await say(pa, "psst, Bob: a direct message");
  await bodies(pa, "psst, Bob: a direct message").waitFor();
  const dmLink = pb.locator("#dm-list .room", { hasText: "Alice Liddell" });
  await dmLink.locator(".badge").waitFor();
  assert.equal(await dmLink.locator(".badge").textContent(), "1");
  await shot(pb, "04-dm-unread-dark");
  await dmLink.click();
  await bodies(pb, "psst, Bob: a direct message").waitFor();
  await say(pb, "got it");
  await bodies(pa, "got it").waitFor();
  await shot(pa, "05-dm");

  // back to the room on both
  await pa.locator("#room-list .room", { hasText: "e2e" }).click();
  await pb.locator("#room-list .room", { hasText: "e2e" }).click();
  await bodies(pa, "Hello from Alice").waitFor();
  await bodies(pb, "Hello from Alice").waitFor();

  // ---- restart the server while both pages are open
  px.pause();
  await server.restart("SIGTERM");
  await pa.waitForSelector('#conn[data-status="reconnecting"]');
  await pb.waitForSelector('#conn[data-status="reconnecting"]');
  // Alice writes while offline: queued, sent once she is back
  await say(pa, "written while offline");
  await pa.locator("#message-list .echo.queued").waitFor();
  await shot(pa, "06-reconnecting");
  // a third client (the library in Node) publishes during the outage
  const carol = server.client({ token: server.token("carol", { name: "Carol" }) });
  cleanups.push(() => carol.close());
  await carol.join("e2e");
  const ack = await carol.publish("e2e", { text: "sent during the outage by Carol" });
  assert.ok(ack.seq > 0);
  await sleep(500);
  px.resume();
  await pa.waitForSelector('#conn[data-status="open"]', { timeout: 60000 });
  await pb.waitForSelector('#conn[data-status="open"]', { timeout: 60000 });
  for (const p of [pa, pb]) {
    await bodies(p, "sent during the outage by Carol").waitFor();
    await bodies(p, "written while offline").waitFor();
  }
  await waitFor(async () => (await pa.locator("#message-list .echo").count()) === 0, { what: "echo replaced" });
  await say(pb, "after the restart");
  await bodies(pa, "after the restart").waitFor();
  await sleep(500);
  for (const [p, who] of [
    [pa, "Alice"],
    [pb, "Bob"],
  ]) {
    for (const text of ["sent during the outage by Carol", "written while offline", "Hello from Alice", "after the restart"]) {
      assert.equal(await bodies(p, text).count(), 1, `${who} sees "${text}" exactly once`);
    }
    // and in seq order
    const seqs = await p.$$eval("#message-list .msg[data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), `${who}: messages in order`);
    assert.equal(new Set(seqs).size, seqs.length, `${who}: no seq twice`);
  }
  await shot(pa, "07-after-restart");

  // ---- infinite scroll back through history
  const total = 130;
  await carol.join("archive");
  for (let i = 1; i <= total; i++) await carol.publish("archive", { text: `archived message ${i}` });
  await openRoom(pa, "archive");
  await bodies(pa, `archived message ${total}`).waitFor();
  const shown = () => pa.locator("#message-list .msg").count();
  assert.ok((await shown()) <= 60, "the first page is the latest messages only");
  await waitFor(
    async () => {
      await pa.evaluate(() => {
        const box = document.getElementById("messages");
        box.scrollTop = 0;
        box.dispatchEvent(new Event("scroll"));
      });
      return (await shown()) === total;
    },
    { timeout: 30000, interval: 300, what: "all history loaded by scrolling up" },
  );
  await pa.locator(".room-start").waitFor();
  const archived = await pa.$$eval("#message-list .msg-body", (els) => els.map((e) => e.textContent));
  assert.deepEqual(archived, Array.from({ length: total }, (_, i) => `archived message ${i + 1}`));
  await openRoom(pa, "e2e");

  // ---- phone-sized screen
  await pb.setViewportSize({ width: 390, height: 844 });
  await sleep(300);
  await shot(pb, "08-mobile-dark");
  await pa.setViewportSize({ width: 390, height: 844 });
  await pa.click("#open-sidebar");
  await sleep(400);
  await shot(pa, "09-mobile-menu");

  assert.deepEqual(errors, [], "no page errors");
  t.diagnostic(`screenshots in ${E2E_DIR}`);
}
