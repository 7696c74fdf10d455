// Shared helpers of the web tests: the library, a WebSocket constructor for
// Node, a scripted fake server for unit tests, the real server as a child
// process, a TCP proxy that can cut or stall connections, and tokens.
import { spawn, execFileSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocketServer, WebSocket as WsWebSocket } from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, "../..");
export const BIN = process.env.CORECHAT_BIN || path.join(ROOT, "target/debug/corechat");
export const E2E_DIR = path.join(ROOT, "target/e2e");

/** Debian's Chromium (or CHROMIUM_BIN) and the flags the browser tests run it with. */
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Clean-ups run after every test of the file, last registered first. */
export function cleanupsAfterAll(after) {
  const cleanups = [];
  after(async () => {
    for (const f of cleanups.reverse()) {
      try {
        await f();
      } catch {}
    }
  });
  return cleanups;
}

export const { CoreChat, CoreChatError, dmRoom, dmPeer, backoffDelay } = await import(
  path.join(ROOT, "web/corechat.js")
);

/** Node 22 has a global WebSocket; Node 20 uses the `ws` package. */
export const WebSocketImpl = globalThis.WebSocket || WsWebSocket;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll until fn() is truthy (returns its value) or fail after timeout. */
export async function waitFor(fn, { timeout = 10000, interval = 20, what = "condition" } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(interval);
  }
}

/**
 * Sentinel for "nothing more arrives" checks against the fake server: a
 * `ping` from the client, answered by the fake connection. A WebSocket keeps
 * order, so once it resolves every frame either side sent before it has been
 * received and handled.
 */
export async function roundTrip(chat, conn) {
  const p = chat.ping();
  const f = await conn.next((x) => x.type === "ping" && !String(x.id).endsWith("-hb"));
  conn.send({ type: "pong", id: f.id });
  await p;
}

/**
 * Sentinel for the real server: after a short quiet spell, a ping round trip
 * on each client. The server answers in order, so every frame it had sent a
 * client before the pong has been handled when this resolves.
 */
export async function settle(...clients) {
  await sleep(300);
  for (const c of clients) await c.ping();
}

/** Record a client's events: `rec.message` is the array of messages, etc. */
export function record(chat, events = ["message", "epoch", "status", "gap", "joined", "error", "welcome"]) {
  const rec = {};
  for (const e of events) {
    rec[e] = [];
    chat.on(e, (x) => rec[e].push(x));
  }
  return rec;
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ------------------------------------------------------------------ tokens

function b64url(buf) {
  return Buffer.from(buf).toString("base64url");
}

/** An HS256 JWT. */
export function mintToken(secret, claims) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A token from the binary: `corechat token --user U --jwt-secret S`. */
export function cliToken(user, secret) {
  return execFileSync(BIN, ["token", "--user", user, "--jwt-secret", secret], { encoding: "utf8" }).trim();
}

// ------------------------------------------------------------------ fake server

/** A scripted stand-in for the server: tests read frames and answer by hand. */
export class FakeServer {
  constructor() {
    this.conns = [];
    this._waiters = [];
  }
  async start() {
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise((r) => this.wss.once("listening", r));
    this.url = `ws://127.0.0.1:${this.wss.address().port}/ws`;
    this.wss.on("connection", (ws, req) => {
      const c = new FakeConn(ws, req);
      this.conns.push(c);
      for (const w of this._waiters.splice(0)) w();
    });
    return this;
  }
  /** The n-th connection (0-based), waiting for it. */
  async conn(n, timeout = 10000) {
    await waitFor(() => this.conns.length > n, { timeout, what: `connection #${n}` });
    return this.conns[n];
  }
  async stop() {
    for (const c of this.conns) c.ws.terminate();
    await new Promise((r) => this.wss.close(r));
  }
}

class FakeConn {
  constructor(ws, req) {
    this.ws = ws;
    this.url = req.url;
    this.token = new URL(req.url, "http://x").searchParams.get("token");
    this.frames = [];
    this._used = new Set();
    this.closed = false;
    ws.on("message", (d) => this.frames.push(JSON.parse(String(d))));
    ws.on("close", () => (this.closed = true));
  }
  send(obj) {
    this.ws.send(JSON.stringify(obj));
  }
  welcome(user = "alice", extra = {}) {
    this.send({
      type: "welcome",
      user,
      name: user,
      session: "s1",
      node: "fake",
      heartbeat_ms: 30000,
      limits: { max_frame_bytes: 65536, max_body_bytes: 16384, rate_per_sec: 20, burst: 40 },
      ...extra,
    });
  }
  /** Close with a code; 1006 drops the TCP connection without a close frame. */
  close(code = 1001, reason = "") {
    if (code === 1006) this.ws.terminate();
    else this.ws.close(code, reason);
  }
  /** The next frame not yet taken that matches (a type or a predicate). */
  async next(match, timeout = 5000) {
    const pred = typeof match === "function" ? match : (f) => f.type === match;
    let found;
    await waitFor(
      () => {
        for (let i = 0; i < this.frames.length; i++) {
          if (!this._used.has(i) && pred(this.frames[i])) {
            this._used.add(i);
            found = this.frames[i];
            return true;
          }
        }
        return false;
      },
      { timeout, what: `frame ${typeof match === "string" ? match : "matching"}` },
    );
    return found;
  }
  /** All frames of a type received so far. */
  all(type) {
    return this.frames.filter((f) => f.type === type);
  }
}

// ------------------------------------------------------------------ real server

/** The real server as a child process. */
export class Server {
  /**
   * @param {{store?: "memory"|"sqlite", dataDir?: string, secret?: string, port?: number, extra?: string[], name?: string}} o
   */
  constructor(o = {}) {
    this.store = o.store || "memory";
    this.dataDir = o.dataDir || (this.store === "sqlite" ? fs.mkdtempSync(path.join(os.tmpdir(), "corechat-data-")) : null);
    this.secret = o.secret || `test-secret-${crypto.randomBytes(8).toString("hex")}`;
    this.port = o.port || null;
    this.extra = o.extra || [];
    this.name = o.name || "server";
    this.proc = null;
    this.log = "";
    this.starts = 0;
  }
  get http() {
    return `http://127.0.0.1:${this.port}`;
  }
  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }
  args() {
    // No clock leeway: the tests mint tokens that expire in seconds and
    // expect the server to act at `exp` (the default leeway is 30 s).
    const a = ["serve", "--listen", `127.0.0.1:${this.port}`, "--jwt-secret", this.secret, "--guest", "--jwt-leeway-s", "0"];
    if (this.store === "memory") a.push("--store", "memory");
    if (this.dataDir) a.push("--data-dir", this.dataDir);
    return a.concat(this.extra);
  }
  async start() {
    if (!fs.existsSync(BIN)) throw new Error(`no server binary at ${BIN} (run cargo build, or set CORECHAT_BIN)`);
    if (!this.port) this.port = await freePort();
    this.starts++;
    const proc = spawn(BIN, this.args(), {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info" },
    });
    this.proc = proc;
    const onData = (d) => {
      this.log += d;
      if (this.log.length > 200000) this.log = this.log.slice(-100000);
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    this.exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
    const end = Date.now() + 20000;
    for (;;) {
      if (proc.exitCode != null || proc.signalCode != null) {
        throw new Error(`server exited at start (${proc.exitCode ?? proc.signalCode}):\n${this.log.slice(-3000)}`);
      }
      try {
        const r = await fetch(`${this.http}/health`);
        if (r.ok) break;
      } catch {}
      if (Date.now() > end) throw new Error(`server did not become healthy:\n${this.log.slice(-3000)}`);
      await sleep(50);
    }
    return this;
  }
  /** Stop it: SIGTERM (graceful, close 1001) or SIGKILL (crash). */
  async stop(signal = "SIGTERM") {
    const proc = this.proc;
    if (!proc || proc.exitCode != null || proc.signalCode != null) return;
    proc.kill(signal);
    const t = setTimeout(() => proc.kill("SIGKILL"), 10000);
    await this.exited;
    clearTimeout(t);
    this.proc = null;
  }
  async restart(signal = "SIGTERM") {
    await this.stop(signal);
    await this.start();
  }
  async guest(name) {
    const r = await fetch(`${this.http}/api/guest`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name }),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`POST /api/guest: ${r.status} ${text}`);
    return JSON.parse(text);
  }
  token(user, claims = {}) {
    return mintToken(this.secret, { sub: user, name: claims.name || user, ...claims });
  }
  /** A library client for this server (or for `url`, e.g. a proxy). */
  client(opts) {
    return new CoreChat({ url: this.ws, WebSocket: WebSocketImpl, baseMs: 100, maxMs: 1000, ...opts });
  }
  cleanup() {
    if (this.dataDir) fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ proxy

/**
 * A TCP proxy in front of a port. `pause()` cuts every connection and
 * refuses new ones until `resume()`; `blackhole("down"|"up")` silently drops
 * what one direction carries (to lose an ack, or a publish, in flight);
 * `cut()` drops every connection at once.
 */
export class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.paused = false;
    this.hole = null;
  }
  async start() {
    this.server = net.createServer((client) => this._onConn(client));
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = this.server.address().port;
    return this;
  }
  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }
  get http() {
    return `http://127.0.0.1:${this.port}`;
  }
  _onConn(client) {
    if (this.paused) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    const pair = { client, upstream };
    this.pairs.add(pair);
    const done = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on("data", (d) => {
      if (this.hole !== "up") upstream.write(d);
    });
    upstream.on("data", (d) => {
      if (this.hole !== "down") client.write(d);
    });
    client.on("error", done);
    upstream.on("error", done);
    client.on("close", done);
    upstream.on("close", done);
  }
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }
  pause() {
    this.paused = true;
    this.cut();
  }
  resume() {
    this.paused = false;
    this.hole = null;
  }
  blackhole(direction) {
    this.hole = direction;
  }
  async stop() {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}
