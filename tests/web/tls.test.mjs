// The web page over https://: the server runs with --tls-cert/--tls-key (a
// throw-away self-signed certificate made with openssl), Chromium loads the
// page from https://, and the page must pick wss:// by itself, sign in as a
// guest and chat with a second page.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { Server, E2E_DIR, CHROMIUM, CHROMIUM_ARGS, cleanupsAfterAll } from "./helpers.mjs";


const cleanups = cleanupsAfterAll(after);

/** A self-signed certificate for localhost/127.0.0.1 and its key. */
function selfSigned() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "corechat-tls-"));
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", key, "-out", cert,
  ], { stdio: "ignore" });
  return { dir, cert, key };
}

/** The Server helper, over https:// (its readiness check speaks TLS too). */
class TlsServer extends Server {
  get http() {
    return `https://127.0.0.1:${this.port}`;
  }
  get ws() {
    return `wss://127.0.0.1:${this.port}/ws`;
  }
}

test("the page served over https:// connects with wss:// and chats", { timeout: 180000 }, async () => {
  const { dir, cert, key } = selfSigned();
  // Node's fetch (the helper's health check) must accept the test certificate.
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
  const server = new TlsServer({ name: "e2e-tls", extra: ["--tls-cert", cert, "--tls-key", key] });
  cleanups.push(async () => {
    await server.stop("SIGKILL");
    server.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await server.start();
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  cleanups.push(() => browser.close());

  const errors = [];
  const open = async (name) => {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    page.on("pageerror", (e) => errors.push(e.message));
    const sockets = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    await page.goto(`${server.http}/`);
    await page.waitForSelector("#guest-name");
    await page.fill("#guest-name", name);
    await page.click("#guest-form button[type=submit]");
    await page.waitForSelector('#conn[data-status="open"]');
    await page.fill("#join-input", "tls-room");
    await page.press("#join-input", "Enter");
    await page.waitForSelector("#composer:not([hidden])");
    return { page, sockets };
  };
  const a = await open("Ada");
  const b = await open("Bo");
  for (const { sockets } of [a, b]) {
    assert.ok(sockets.length > 0, "the page opened a WebSocket");
    for (const url of sockets) assert.match(url, /^wss:\/\/127\.0\.0\.1:\d+\/ws/);
  }
  await a.page.fill("#input", "hello over wss");
  await a.page.press("#input", "Enter");
  await b.page
    .locator("#message-list .msg-body")
    .filter({ hasText: /^hello over wss$/ })
    .waitFor({ timeout: 20000 });
  fs.mkdirSync(E2E_DIR, { recursive: true });
  await b.page.screenshot({ path: path.join(E2E_DIR, "20-over-tls.png") });
  assert.deepEqual(errors, []);
});
