// Compression with a real browser: Chromium offers permessage-deflate with
// its context kept between messages; the server answers
// `client_no_context_takeover` (so it holds no inflate window per
// connection). Chromium must honour that: if it kept compressing against
// earlier messages, the server's per-message decoder would fail and close
// the connection with 1007. The page sends long, repetitive messages (the
// kind that refer back to earlier ones) and gets every one back compressed.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { Server, CHROMIUM, CHROMIUM_ARGS, cleanupsAfterAll } from "./helpers.mjs";


const cleanups = cleanupsAfterAll(after);

async function metric(server, name) {
  const text = await (await fetch(`${server.http}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name) && (line[name.length] === " " || line[name.length] === "{")) {
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return sum;
}

test("Chromium's compressed messages inflate without a window per connection", { timeout: 120000 }, async () => {
  const server = new Server({ name: "deflate" });
  cleanups.push(() => server.stop("SIGKILL"));
  await server.start();
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  cleanups.push(() => browser.close());
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${server.http}/health`);
  const { token } = await server.guest("zip");
  const before = await metric(server, "corechat_frames_compressed_total");

  const result = await page.evaluate(
    async ({ url, n }) => {
      const ws = new WebSocket(url);
      const frames = [];
      let closed = null;
      ws.onmessage = (e) => frames.push(JSON.parse(e.data));
      ws.onclose = (e) => (closed = { code: e.code, reason: e.reason });
      await new Promise((ok, fail) => {
        ws.onopen = ok;
        ws.onerror = fail;
      });
      const until = async (pred) => {
        for (let i = 0; i < 500 && !pred() && !closed; i++) await new Promise((r) => setTimeout(r, 20));
      };
      ws.send(JSON.stringify({ type: "join", room: "zipped", id: "j" }));
      await until(() => frames.some((f) => f.type === "joined"));
      const bodies = [];
      for (let k = 0; k < n; k++) {
        const body = `message ${k}: ` + "the same long sentence, again and again. ".repeat(20);
        bodies.push(body);
        ws.send(JSON.stringify({ type: "publish", room: "zipped", body, id: `p${k}` }));
      }
      await until(() => frames.filter((f) => f.type === "message").length >= n);
      const got = frames.filter((f) => f.type === "message").map((f) => f.body);
      const extensions = ws.extensions;
      ws.close();
      return { extensions, got, bodies, closed, errors: frames.filter((f) => f.type === "error") };
    },
    { url: `${server.ws}?token=${token}`, n: 8 },
  );

  assert.match(result.extensions, /permessage-deflate/);
  assert.match(result.extensions, /client_no_context_takeover/);
  assert.equal(result.closed, null, `closed early: ${JSON.stringify(result.closed)}`);
  assert.deepEqual(result.errors, []);
  assert.deepEqual(result.got, result.bodies);
  // Every room message (over --compression-min-bytes) went out compressed.
  assert.equal((await metric(server, "corechat_frames_compressed_total")) - before, 8);
});
