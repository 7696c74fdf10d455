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
import { Server, Proxy, E2E_DIR, waitFor, sleep, mintToken, CHROMIUM, CHROMIUM_ARGS, cleanupsAfterAll } from "./helpers.mjs";


const cleanups = cleanupsAfterAll(after);

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

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
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

/** The sum of a metric family's samples on the server's /metrics. */
async function metric(server, name) {
  const text = await (await fetch(`${server.http}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

test("a refused token stops at a sign-in screen; @name finds the user id; never-seen ids ask; no one is seen by themselves", { timeout: 180000 }, async (t) => {
  const server = new Server({ name: "e2e-people" });
  cleanups.push(async () => {
    await server.stop("SIGKILL");
    server.cleanup();
  });
  await server.start();
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  cleanups.push(() => browser.close());
  const errors = [];
  const newPage = async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("dialog", (d) => {
      errors.push(`dialog: ${d.message()}`);
      d.dismiss();
    });
    return page;
  };
  const pages = [];
  try {
    const base = server.http;

    // ---- a token signed with another secret, then an expired one
    const pm = await newPage();
    pages.push(pm);
    for (const [token, reason] of [
      [mintToken("not-the-server-secret", { sub: "mallory", name: "Mallory" }), "bad signature"],
      [server.token("mallory", { exp: Math.floor(Date.now() / 1000) - 3600 }), "token expired"],
    ]) {
      await pm.goto(`${base}/`);
      await pm.evaluate((tok) => localStorage.setItem("corechat.token", tok), token);
      await pm.reload();
      await pm.locator("#auth-failed").waitFor({ state: "visible", timeout: 20000 });
      assert.equal(await pm.textContent("#auth-failed-text"), `Your sign-in is not valid: ${reason}.`);
      assert.equal(await pm.isVisible("#app"), false);
      // and it stays there: no more upgrade attempts, no more checks
      const refused = await metric(server, "corechat_auth_failures_total");
      await sleep(2500);
      assert.equal(await metric(server, "corechat_auth_failures_total"), refused, "the page stopped reconnecting");
      assert.equal(await pm.evaluate(() => window.corechat.status), "closed");
      if (reason === "bad signature") await shot(pm, "10-sign-in-refused");
      await pm.click("#auth-failed-back");
      await pm.locator("#guest-name").waitFor({ state: "visible" });
      assert.equal(await pm.evaluate(() => localStorage.getItem("corechat.token")), null, "the token is forgotten");
    }

    // ---- Erin and Bob meet in a room
    const pe = await newPage();
    const pb = await newPage();
    pages.push(pe, pb);
    await login(pe, base, "Erin Hannon");
    await login(pb, base, "Bob Vance");
    const erinId = await pe.evaluate(() => window.corechat.user);
    const bobId = await pb.evaluate(() => window.corechat.user);
    assert.notEqual(erinId, "Erin");
    await openRoom(pe, "office");
    await openRoom(pb, "office");
    await pb.locator(".member-name", { hasText: "Erin Hannon" }).waitFor();
    await say(pe, "hello from Erin");
    await bodies(pb, "hello from Erin").waitFor();

    // ---- no one is "seen by" themselves: Bob writes last and reads his own message
    await say(pb, "Bob has the last word");
    await bodies(pe, "Bob has the last word").waitFor();
    const seenBob = pe.locator(".msg-seen", { hasText: "Seen by Bob Vance" });
    await seenBob.waitFor();
    assert.equal(await seenBob.count(), 1);
    assert.equal(await pe.locator(`#message-list li.msg[data-from="${bobId}"] .msg-seen`).count(), 0, "no receipt under Bob's own message on Erin's page");
    assert.equal(await seenBob.evaluate((el) => el.closest("li.msg").dataset.from), erinId, "Bob's receipt sits under Erin's message");
    assert.equal(await pb.locator(".msg-seen", { hasText: "Bob Vance" }).count(), 0, "Bob never sees himself as a reader");

    // ---- @ completes from the people the page knows, by name, and shows the id
    await pb.fill("#join-input", "@eri");
    const opt = pb.locator("#join-suggest .suggest-opt").first();
    await opt.waitFor();
    assert.equal(await opt.locator(".suggest-name").textContent(), "Erin Hannon");
    assert.equal(await opt.locator(".suggest-id").textContent(), `@${erinId}`);
    assert.equal(await opt.getAttribute("aria-selected"), "true");
    await shot(pb, "11-at-completion");
    await pb.press("#join-input", "Enter");
    await pb.waitForFunction(() => document.getElementById("room-title").textContent.includes("Erin Hannon"));
    assert.equal(await pb.evaluate(() => location.hash), `#${encodeURIComponent(`@${erinId}`)}`);
    await say(pb, "psst Erin, this one reaches you");
    const dmLink = pe.locator("#dm-list .room", { hasText: "Bob Vance" });
    await dmLink.locator(".badge").waitFor();
    await dmLink.click();
    await bodies(pe, "psst Erin, this one reaches you").waitFor();

    // the display name typed in full and Enter works too; clicking an option as well
    await pb.locator("#room-list .room", { hasText: "office" }).click();
    await pb.fill("#join-input", "@Erin Hannon");
    await pb.locator("#join-suggest .suggest-opt").first().click();
    await pb.waitForFunction(() => document.getElementById("room-title").textContent.includes("Erin Hannon"));

    // ---- an id never seen: the join form asks first
    await pb.fill("#join-input", "@Erin");
    await pb.locator("#join-suggest .suggest-opt").first().waitFor(); // "Erin Hannon" is offered...
    await pb.press("#join-input", "Escape"); // ...but Bob insists on the literal id
    await pb.press("#join-input", "Enter");
    const ask = pb.locator("#join-confirm");
    await ask.waitFor({ state: "visible" });
    assert.match(await ask.textContent(), /No one with the user id Erin has been seen/);
    await shot(pb, "12-never-seen-id");
    await ask.locator('button[data-confirm="no"]').click();
    assert.equal(await ask.isVisible(), false);
    assert.ok((await pb.textContent("#room-title")).includes("Erin Hannon"), "nothing opened on Cancel");
    await pb.press("#join-input", "Escape"); // focusing the input offers the list again
    await pb.press("#join-input", "Enter");
    await ask.locator('button[data-confirm="yes"]').click();
    await pb.waitForFunction(() => document.getElementById("room-title").textContent.trim() === "Erin");
    assert.equal(await pb.inputValue("#join-input"), "");
    await say(pb, "to the literal id, knowingly");
    await bodies(pb, "to the literal id, knowingly").waitFor();
    assert.equal(await pb.isVisible("#dm-confirm"), false, "a confirmed id does not ask again");

    // ---- a conversation opened by its address asks before the first message
    await pb.evaluate(() => (location.hash = "#@ghost.writer"));
    await pb.waitForFunction(() => document.getElementById("room-title").textContent.trim() === "ghost.writer");
    await say(pb, "anyone there?");
    const askSend = pb.locator("#dm-confirm");
    await askSend.waitFor({ state: "visible" });
    assert.match(await askSend.textContent(), /never seen anyone with the user id ghost\.writer/);
    assert.equal(await pb.locator("#message-list .msg").count(), 0, "nothing sent yet");
    assert.equal(await pb.inputValue("#input"), "anyone there?", "the text is kept");
    await askSend.locator('button[data-confirm="yes"]').click();
    await bodies(pb, "anyone there?").waitFor();
    assert.equal(await pb.inputValue("#input"), "");
    // Erin never got any of these
    assert.equal(await bodies(pe, "to the literal id, knowingly").count(), 0);
  } catch (e) {
    for (const [i, p] of pages.entries()) await shot(p, `failure-people-${i}`).catch(() => {});
    t.diagnostic(`server log tail:\n${server.log.slice(-2000)}`);
    throw e;
  }
  assert.deepEqual(errors, [], "no page errors");
});

test("read receipts survive a reload; the admin page shows live numbers and disconnects a user", { timeout: 180000 }, async (t) => {
  const server = new Server({ name: "e2e-admin", extra: ["--shards", "2"] });
  cleanups.push(async () => {
    await server.stop("SIGKILL");
    server.cleanup();
  });
  await server.start();
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  cleanups.push(() => browser.close());
  const errors = [];
  const newPage = async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("dialog", (d) => {
      errors.push(`dialog: ${d.message()}`);
      d.dismiss();
    });
    return page;
  };
  const adminToken = server.token("operator", { admin: true });
  const stats = async () => {
    const r = await fetch(`${server.http}/api/admin/stats?top=20`, { headers: { authorization: `Bearer ${adminToken}` } });
    assert.equal(r.status, 200);
    return r.json();
  };
  const pages = [];
  try {
    const base = server.http;
    const pe = await newPage();
    const pb = await newPage();
    pages.push(pe, pb);
    await login(pe, base, "Erin Hannon");
    await login(pb, base, "Bob Vance");
    const erinId = await pe.evaluate(() => window.corechat.user);
    const bobId = await pb.evaluate(() => window.corechat.user);
    await openRoom(pe, "ops");
    await openRoom(pb, "ops");
    await say(pe, "Erin checks in");
    await bodies(pb, "Erin checks in").waitFor();
    const seenBob = pe.locator(".msg-seen", { hasText: "Seen by Bob Vance" });
    await seenBob.waitFor();

    // ---- read receipts survive a reload: they come with `joined.reads`
    await pe.reload();
    await pe.waitForSelector('#conn[data-status="open"]');
    await bodies(pe, "Erin checks in").waitFor();
    await seenBob.waitFor({ timeout: 10000 });
    assert.equal(await seenBob.count(), 1, "Bob's receipt is back after the reload");
    assert.equal(await pe.locator(".msg-seen", { hasText: "Erin Hannon" }).count(), 0, "Erin is never seen by herself");

    // ---- the admin page asks for a token, then shows what the server has
    const pa = await newPage();
    pages.push(pa);
    await pa.goto(`${base}/admin`);
    await pa.locator("#admin-login").waitFor({ state: "visible" });
    await pa.fill("#admin-token", server.token("bob-is-no-admin"));
    await pa.click("#admin-token-form button[type=submit]");
    await pa.waitForFunction(() => document.getElementById("admin-login-error").textContent.includes("not an admin token"));
    await pa.fill("#admin-token", adminToken);
    await pa.click("#admin-token-form button[type=submit]");
    await pa.locator("#dashboard").waitFor({ state: "visible" });
    assert.equal(await pa.evaluate(() => sessionStorage.getItem("corechat.admin-token")), adminToken);

    // two chat pages are connected: the totals, the shard rows and the
    // connections chart's legend all say so, as the server does
    const truth = await stats();
    assert.equal(truth.totals.sessions, 2, JSON.stringify(truth));
    await pa.waitForFunction(() => document.getElementById("total-sessions").textContent === "2");
    for (const s of truth.shards) {
      const row = pa.locator(`#shards-table tr[data-shard="${s.shard}"] td[data-k="sessions"]`);
      assert.equal(await row.textContent(), String(s.sessions), `shard ${s.shard} row`);
      const legend = pa.locator(`#chart-connections .legend-value[data-series="shard ${s.shard}"]`);
      assert.equal(await legend.textContent(), String(s.sessions), `shard ${s.shard} legend`);
    }
    const room = pa.locator('#rooms-table tr[data-room="ops"]');
    await room.waitFor();
    assert.equal(await room.locator('td[data-k="members"]').textContent(), "2");
    assert.equal(await room.locator('td[data-k="seq"]').textContent(), String(truth.rooms.find((r) => r.room === "ops").seq));
    assert.equal(await pa.textContent("#store-ready"), "ready");
    // the charts are live: their lines grow every second
    const points = () => pa.evaluate(() => document.querySelector("#chart-connections polyline").getAttribute("points").split(" ").length);
    const before = await points();
    await pa.waitForFunction((n) => document.querySelector("#chart-connections polyline").getAttribute("points").split(" ").length > n, before);

    // deliveries/s and the latency percentiles move while Erin talks
    let n = 0;
    await waitFor(
      async () => {
        await say(pe, `busy ${n++}`);
        return pa.evaluate(() => {
          const d = Number(document.getElementById("total-deliveries").textContent.replace(/,/g, ""));
          const p99 = Number(document.querySelector('#chart-latency .legend-value[data-series="p99"]').textContent.replace(/,/g, ""));
          return d > 0 && p99 > 0;
        });
      },
      { timeout: 30000, interval: 200, what: "deliveries/s and p99 on the admin page" },
    );
    await shot(pa, "13-admin");

    // ---- look Bob up and disconnect him: his socket closes with 1008
    await pb.evaluate(() => {
      window.__closes = [];
      window.corechat.on("disconnect", (e) => window.__closes.push(e));
    });
    await pa.fill("#lookup-input", bobId);
    await pa.click("#lookup-form button[type=submit]");
    await pa.locator("#lookup-result").waitFor({ state: "visible" });
    assert.equal(await pa.textContent("#lookup-online"), "online");
    assert.equal(await pa.textContent("#lookup-connections"), "1");
    assert.equal(await pa.textContent("#lookup-rooms"), "ops");
    await pa.click("#disconnect");
    await pa.waitForFunction(() => document.getElementById("lookup-note").textContent.startsWith("Closed 1 socket"));
    await pb.waitForFunction(() => window.__closes.length > 0);
    assert.deepEqual(await pb.evaluate(() => window.__closes[0]), { code: 1008, reason: "disconnected by admin" });
    const metrics = await (await fetch(`${server.http}/metrics`)).text();
    const policy = metrics
      .split("\n")
      .filter((l) => l.startsWith("corechat_disconnects_total{") && l.includes('reason="policy"'))
      .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
    assert.equal(policy, 1, "one socket closed by policy: Bob's");
    // Erin was not touched
    assert.equal(await pe.evaluate(() => window.corechat.status), "open");
    assert.equal(await pe.evaluate(() => window.corechat.user), erinId);
  } catch (e) {
    for (const [i, p] of pages.entries()) await shot(p, `failure-admin-${i}`).catch(() => {});
    t.diagnostic(`server log tail:\n${server.log.slice(-2000)}`);
    throw e;
  }
  assert.deepEqual(errors, [], "no page errors");
});
