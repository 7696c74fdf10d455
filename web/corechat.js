// corechat.js: JavaScript client for the corechat wire protocol, version 1.
//
// An ES module with no dependencies and no build step. It runs in browsers
// and in Node 20+ (pass the `ws` package's WebSocket as the `WebSocket`
// option where there is no global one; Node 22 has it built in).
//
//   import { CoreChat } from "/corechat.js";
//   const chat = new CoreChat({ url: "ws://localhost:8080/ws", token });
//   chat.on("message", (m) => console.log(m.room, m.seq, m.name, m.body));
//   await chat.join("lobby");
//   await chat.publish("lobby", { text: "hello" });
//
// Delivery to the application
// ---------------------------
// The library keeps, for every room it has seen a message of (joined rooms
// and dm rooms alike), the last seq it handed to the application. It emits
// a room's `message` events in ascending seq order with no repeats: a
// message whose seq is at or below the last one is dropped, one that skips
// ahead is held back while the missing ones are fetched (from the resume
// replay, or with `history`). After a reconnect it rejoins every room with
// `since` = that last seq, and catches dm rooms up through `rooms` and
// `history`, so the application sees every message exactly once and in
// order across disconnects. If a room's `epoch` changes (its history was
// lost and numbering restarted), the old position means nothing: the
// library resets the room to the new epoch's current seq, emits `epoch`,
// and the application should reload the room with `history`.
//
// Publishing while offline, and what is guaranteed
// -----------------------------------------------
// `publish` and `dm` never send a message twice. Each gets a client id
// (`promise.id`, also the request `id`) and a record in `chat.pending`
// whose `state` is one of:
//
//   queued  not yet written to any connection (made while offline or while
//           the room is being rejoined). It is sent exactly once, on the
//           first connection that is ready, after that room's rejoin.
//   sent    written to a connection, waiting for its `ack`.
//   acked   the server stored it; the promise resolved with the ack.
//   unknown the connection dropped after the record was sent and before
//           its ack arrived. The library does NOT resend it: the server
//           may have stored it. After reconnecting it looks for it in the
//           room's resume replay (a message from this user, in that room,
//           after the position the room had when it was sent, whose body
//           serializes to the same JSON). Found: the record becomes
//           `acked` and the promise resolves with `{..., recovered: true}`.
//           Not found once the room has caught up: the promise rejects with
//           code `unconfirmed` and the record stays `unknown` (if the
//           message still turns up later, the record becomes `acked` and a
//           `pending` event says so). The application may `resend()` it,
//           knowingly risking a duplicate.
//   failed  the server answered with an error (the promise rejected with
//           its code), or the client was closed before it was sent.
//
// So: exactly once for everything queued while offline (it was never sent
// before), at most once for a publish whose ack was lost in flight, and
// never a silent loss: every publish either resolves with its seq or
// rejects with a code. Matching a lost-ack publish by body is exact when
// the body holds something unique (the bundled app puts its client id in
// `body.cid`); with identical bodies sent from two connections of the same
// user at the same moment it could take one for the other. The queue is
// kept in memory only: it does not survive a page reload.
//
// Reconnection
// ------------
// Exponential backoff with full jitter: attempt n waits a random time in
// [0, min(maxMs, baseMs * 2^n)]. Close 1008 with reason `token expired`
// calls `getToken()` for a new token and reconnects at once; 1013 (slow
// consumer) and 1001 (server going away) reconnect and resume; so does any
// other unexpected close. A connection that fails `tokenRefreshAfter`
// times in a row before its `welcome` (a browser cannot see the HTTP 401)
// also asks `getToken()` again. When the upgrade itself fails (close 1006
// before any `welcome`: a browser cannot see the HTTP 401), the library asks
// `GET /api/me` with the token before retrying: a 401 there means the token
// is refused, so (after one fresh `getToken()`, if there is one) it stops
// for good and emits `auth_failed` with the reason. When the server is silent for longer than
// its heartbeat the library sends a `ping`, and drops the connection if no
// answer comes (a half-open TCP connection is otherwise never noticed).

/**
 * @typedef {"connecting"|"open"|"reconnecting"|"closed"} Status
 *
 * @typedef {Object} Message
 * @property {string} room
 * @property {number} seq
 * @property {string} from   user id of the sender
 * @property {string} name   display name of the sender
 * @property {number} ts     server time, ms since the Unix epoch
 * @property {*} body        the JSON value as published
 *
 * @typedef {Object} Welcome
 * @property {string} user
 * @property {string} name
 * @property {string} session
 * @property {string} node
 * @property {number} heartbeat_ms
 * @property {{max_frame_bytes:number,max_body_bytes:number,rate_per_sec:number,burst:number}} limits
 *
 * @typedef {Object} Joined
 * @property {string} room
 * @property {number} seq
 * @property {string} epoch
 * @property {number} members
 * @property {number} read
 * @property {boolean} recovered
 * @property {Object<string, number>} [reads]  other members' read markers
 *   (user -> seq), only with the `reads` option
 *
 * @typedef {Object} Ack
 * @property {string|number} id
 * @property {string} room
 * @property {number} seq
 * @property {number} ts
 * @property {boolean} [recovered]  true when confirmed from the resume replay
 *
 * @typedef {Object} PendingRecord
 * @property {string} id
 * @property {"publish"|"dm"} kind
 * @property {string|null} room     the room (for a dm: known once the user id is)
 * @property {string} [to]          the recipient of a dm
 * @property {*} body
 * @property {"queued"|"sent"|"acked"|"unknown"|"failed"} state
 * @property {Ack} [ack]
 * @property {Error} [error]
 * @property {number} createdAt
 */

const DEFAULTS = {
  baseMs: 500,
  maxMs: 30000,
  requestTimeoutMs: 20000,
  tokenRefreshAfter: 3,
  gapFillDelayMs: 250,
  pingTimeoutMs: 10000,
  catchUpTimeoutMs: 3000,
};

/** An Error with the protocol's error `code` (and `retryAfterMs`). */
export class CoreChatError extends Error {
  /**
   * @param {string} code
   * @param {string} [message]
   * @param {{retryAfterMs?: number, reply?: object}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "CoreChatError";
    /** @type {string} */
    this.code = code;
    /** @type {number|undefined} */
    this.retryAfterMs = extra.retryAfterMs;
    this.reply = extra.reply;
  }
}

/**
 * Exponential backoff with full jitter: a random delay in
 * [0, min(maxMs, baseMs * 2^attempt)).
 * @param {number} attempt  0 for the first retry
 * @param {number} baseMs
 * @param {number} maxMs
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, baseMs, maxMs, random = Math.random) {
  const cap = Math.min(maxMs, baseMs * 2 ** attempt);
  return Math.floor(random() * cap);
}

/** The dm room of two users: `dm:<smaller id>:<larger id>` (byte order). */
export function dmRoom(a, b) {
  const [x, y] = byteLess(a, b) ? [a, b] : [b, a];
  return `dm:${x}:${y}`;
}

/** The other user of a dm room, seen from `me`; null for other rooms. */
export function dmPeer(room, me) {
  if (!room.startsWith("dm:")) return null;
  const rest = room.slice(3);
  // user ids contain no ':' (they are [A-Za-z0-9_.@-]), so the split is exact
  const i = rest.indexOf(":");
  if (i < 0) return null;
  const x = rest.slice(0, i);
  const y = rest.slice(i + 1);
  return x === me ? y : x;
}

function byteLess(a, b) {
  const ea = new TextEncoder().encode(a);
  const eb = new TextEncoder().encode(b);
  const n = Math.min(ea.length, eb.length);
  for (let i = 0; i < n; i++) if (ea[i] !== eb[i]) return ea[i] < eb[i];
  return ea.length < eb.length;
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === "function") {
    const a = new Uint8Array(6);
    c.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return Math.random().toString(16).slice(2, 14);
}

function stableJson(v) {
  try {
    return JSON.stringify(v);
  } catch {
    return undefined;
  }
}

/** Minimal event emitter that works the same in browsers and Node. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }
  /**
   * Subscribe; returns a function that unsubscribes.
   * @param {string} event
   * @param {Function} fn
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) {
    const s = this._handlers.get(event);
    if (s) s.delete(fn);
  }
  once(event, fn) {
    const off = this.on(event, (...a) => {
      off();
      fn(...a);
    });
    return off;
  }
  emit(event, ...args) {
    const s = this._handlers.get(event);
    if (!s) return;
    for (const fn of [...s]) {
      try {
        fn(...args);
      } catch (e) {
        // a failing handler must not break the client
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

export class CoreChat extends Emitter {
  /**
   * @param {Object} opts
   * @param {string} opts.url  WebSocket URL of the server's `/ws` (the token
   *   is added as `?token=`). In a browser it defaults to this page's host.
   * @param {string} [opts.token]
   * @param {() => (string|Promise<string>)} [opts.getToken]  called when
   *   there is no token, on `token expired`, and after repeated failures.
   * @param {any} [opts.WebSocket]  a WebSocket constructor (e.g. `ws`)
   * @param {boolean} [opts.autoConnect=true]
   * @param {number} [opts.baseMs=500]   backoff base
   * @param {number} [opts.maxMs=30000]  backoff cap
   * @param {number} [opts.requestTimeoutMs=20000]
   * @param {number} [opts.tokenRefreshAfter=3]
   * @param {boolean} [opts.checkAuth=true]  after a failed upgrade, ask
   *   `GET /api/me` whether the token is refused (stop with `auth_failed`)
   * @param {string} [opts.meUrl]  default: `/api/me` on the host of `url`
   * @param {typeof fetch} [opts.fetch]  default: the global `fetch`
   * @param {boolean} [opts.reads=false]  ask every `join` for the other
   *   members' read markers (`joined.reads`, a server extension)
   * @param {(text: string) => any} [opts.parse=JSON.parse]  frame parser
   *   (JSON.parse rounds integers beyond 2^53; pass a lossless parser if
   *   bodies carry such numbers)
   */
  constructor(opts = {}) {
    super();
    this.opts = { ...DEFAULTS, ...opts };
    this.url = opts.url || defaultUrl();
    if (!this.url) throw new TypeError("CoreChat: `url` is required");
    this._token = opts.token || null;
    this._WS = opts.WebSocket || globalThis.WebSocket;
    if (!this._WS) {
      throw new TypeError(
        "CoreChat: no WebSocket constructor; pass { WebSocket } (e.g. from the `ws` package)",
      );
    }
    this._parse = opts.parse || JSON.parse;
    /** @type {Status} */
    this.status = "closed";
    /** @type {Welcome|null} */
    this.welcome = null;
    this._ws = null;
    this._conn = 0; // connection generation
    this._ready = false; // welcome received on the current connection
    this._everWelcomed = false;
    this._attempt = 0; // backoff attempt counter
    this._failsBeforeWelcome = 0;
    this._closedByUser = false;
    this._timer = null;
    this._seq = 0;
    this._idPrefix = randomId();
    /** @type {Map<string, any>} requests waiting for a reply, by id */
    this._requests = new Map();
    /** @type {Map<string, any>} room state, by room */
    this._rooms = new Map();
    /** @type {PendingRecord[]} publishes/dms not yet settled, in order */
    this._outbox = [];
    /** @type {Map<string, any>} read markers waiting to be sent */
    this._readQueue = new Map();
    this._lastFrameAt = 0;
    this._hbTimer = null;
    this._pingOut = false;
    this._connectWaiters = [];
    this._onOnline = () => {
      if (this.status === "reconnecting" && !this._ws) this._reconnectNow();
    };
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("online", this._onOnline);
    }
    if (this.opts.autoConnect !== false) this.connect().catch(() => {});
  }

  // ---- public state -------------------------------------------------

  /** This connection's user id (from `welcome`), or null before it. */
  get user() {
    return this.welcome ? this.welcome.user : null;
  }

  /** Rooms the application has joined (and that are rejoined on reconnect). */
  get joinedRooms() {
    return [...this._rooms.values()].filter((r) => r.wanted).map((r) => r.room);
  }

  /** Publishes and dms not yet settled (queued, sent, or unknown). */
  get pending() {
    return this._outbox.slice();
  }

  /**
   * The last seq handed to the application for a room (0 if none).
   * @param {string} room
   */
  lastSeq(room) {
    const r = this._rooms.get(room);
    return r && r.last != null ? r.last : 0;
  }

  /**
   * The epoch last seen for a room (from `joined`), or null.
   * @param {string} room
   */
  epoch(room) {
    const r = this._rooms.get(room);
    return r ? r.epoch : null;
  }

  // ---- connection ---------------------------------------------------

  /**
   * Start connecting (if not already). Resolves with the first `welcome`.
   * @returns {Promise<Welcome>}
   */
  connect() {
    this._closedByUser = false;
    const p = new Promise((resolve, reject) => {
      if (this._ready) resolve(this.welcome);
      else this._connectWaiters.push({ resolve, reject });
    });
    if (!this._ws && !this._timer && !this._connecting) {
      this._setStatus(this._everWelcomed ? "reconnecting" : "connecting");
      this._open();
    }
    return p;
  }

  /**
   * Close for good: no reconnection. Outstanding requests and queued
   * publishes reject with code `closed`.
   */
  close() {
    this._closeWith(new CoreChatError("closed", "client closed"));
  }

  _closeWith(err) {
    this._closedByUser = true;
    clearTimeout(this._timer);
    this._timer = null;
    this._stopHeartbeat();
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("online", this._onOnline);
    }
    const ws = this._ws;
    this._ws = null;
    this._ready = false;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, "client closed");
      } catch {}
    }
    for (const [, req] of this._requests) {
      clearTimeout(req.timer);
      req.reject(err);
    }
    this._requests.clear();
    for (const rec of this._outbox) {
      if (rec.state === "queued" || rec.state === "sent" || rec.state === "unknown") {
        this._settle(rec, "failed", null, err);
      }
    }
    this._outbox = [];
    for (const w of this._connectWaiters) w.reject(err);
    this._connectWaiters = [];
    for (const r of this._rooms.values()) {
      clearTimeout(r.gapTimer);
      clearTimeout(r.catchUpTimer);
    }
    this._setStatus("closed");
  }

  async _open() {
    this._connecting = true;
    const gen = ++this._conn;
    let token = this._token;
    try {
      if (
        this.opts.getToken &&
        (!token || this._needToken || this._failsBeforeWelcome >= this.opts.tokenRefreshAfter)
      ) {
        token = await this.opts.getToken();
        this._token = token;
        this._needToken = false;
        this._tokenFresh = true;
        if (this._failsBeforeWelcome >= this.opts.tokenRefreshAfter) this._failsBeforeWelcome = 0;
      }
    } catch (e) {
      this._connecting = false;
      if (gen !== this._conn || this._closedByUser) return;
      this.emit("error", new CoreChatError("token", `getToken failed: ${e && e.message}`));
      this._scheduleReconnect();
      return;
    }
    this._connecting = false;
    if (gen !== this._conn || this._closedByUser) return;
    if (!token) {
      this.emit("error", new CoreChatError("token", "no token (pass `token` or `getToken`)"));
      this.close();
      return;
    }
    const sep = this.url.includes("?") ? "&" : "?";
    let ws;
    try {
      ws = new this._WS(`${this.url}${sep}token=${encodeURIComponent(token)}`);
    } catch (e) {
      this.emit("error", new CoreChatError("connect", String(e && e.message)));
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._ready = false;
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._onClose(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // a close event always follows
    };
  }

  _onClose(code, reason) {
    const wasReady = this._ready;
    this._ws = null;
    this._ready = false;
    this._stopHeartbeat();
    reason = typeof reason === "string" ? reason : reason ? String(reason) : "";
    this.emit("disconnect", { code, reason });
    if (!wasReady) this._failsBeforeWelcome++;
    // publishes written to the dead connection and not acked: in doubt
    for (const rec of this._outbox) {
      if (rec.state === "sent") {
        rec.state = "unknown";
        rec.conn = -1;
        this.emit("pending", rec);
      }
    }
    // the application's requests are safe to repeat: they are resent on the
    // next connection; internal ones belonged to this connection only
    for (const [id, req] of [...this._requests]) {
      req.sent = false;
      if (req.internal) {
        this._requests.delete(id);
        clearTimeout(req.timer);
        req.reject(new CoreChatError("disconnected", "connection lost"));
      }
    }
    for (const r of this._rooms.values()) {
      r.ready = false;
      r.catchUp = null;
    }
    if (this._closedByUser) return;
    let delay = null;
    if (code === 1008 && /token expired/i.test(reason)) {
      if (this.opts.getToken) {
        this._needToken = true;
        delay = 0;
      } else {
        this.emit("error", new CoreChatError("token_expired", "token expired and no getToken"));
        this.close();
        return;
      }
    } else if (code === 1008) {
      // policy (abuse): back off harder
      this._attempt = Math.max(this._attempt, 3);
    } else if (code === 1006 && !wasReady && this.opts.checkAuth !== false) {
      // The upgrade failed, and a browser cannot see why (a 401 and a dead
      // server both look like 1006): ask /api/me whether the token is the
      // reason before trying again.
      this._setStatus("reconnecting");
      this._checkAuth();
      return;
    }
    this._scheduleReconnect(delay);
  }

  /** The URL of `GET /api/me` on the server of `url` (null if unknown). */
  _meUrl() {
    if (this.opts.meUrl) return this.opts.meUrl;
    try {
      const u = new URL(this.url);
      u.protocol = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol;
      u.pathname = u.pathname.replace(/\/ws\/?$/, "") + "/api/me";
      u.search = "";
      u.hash = "";
      return u.toString();
    } catch {
      return null;
    }
  }

  /**
   * After an upgrade that failed: `GET /api/me` with the token. A 401 means
   * the token is refused: with `getToken` a fresh one is asked for once;
   * otherwise (or if the fresh one is refused too) the client stops for
   * good with an `auth_failed` event `{reason, status}` and pending work
   * rejects with code `auth_failed`. Any other answer, or none, reconnects
   * with backoff as usual.
   */
  async _checkAuth() {
    const gen = this._conn;
    const token = this._token;
    const fetchFn = this.opts.fetch || globalThis.fetch;
    const url = this._meUrl();
    let refused = null;
    if (fetchFn && url && token) {
      const ctl = typeof AbortController === "function" ? new AbortController() : null;
      const timer = ctl ? setTimeout(() => ctl.abort(), this.opts.authCheckTimeoutMs || 5000) : null;
      try {
        const res = await fetchFn(url, {
          headers: { authorization: `Bearer ${token}` },
          cache: "no-store",
          signal: ctl ? ctl.signal : undefined,
        });
        if (res.status === 401) {
          let reason = "";
          try {
            const j = await res.json();
            if (j && typeof j.error === "string") reason = j.error;
          } catch {}
          refused = reason || "token refused";
        }
      } catch {
        // unreachable: the server is down, not the token
      } finally {
        clearTimeout(timer);
      }
    }
    if (gen !== this._conn || this._closedByUser || this._ws || this._timer) return;
    if (refused == null) {
      this._scheduleReconnect();
      return;
    }
    if (this.opts.getToken && !this._tokenFresh) {
      // the token we had is refused: ask for a new one, once
      this._needToken = true;
      this._scheduleReconnect(0);
      return;
    }
    this._tokenFresh = false;
    this.emit("auth_failed", { reason: refused, status: 401 });
    this._closeWith(new CoreChatError("auth_failed", refused));
  }

  _scheduleReconnect(delay = null) {
    if (this._closedByUser) return;
    this._setStatus("reconnecting");
    if (delay == null) {
      delay = backoffDelay(this._attempt, this.opts.baseMs, this.opts.maxMs);
      this._attempt = Math.min(this._attempt + 1, 30);
    }
    this.emit("retry", { attempt: this._attempt, delayMs: delay });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
  }

  _reconnectNow() {
    clearTimeout(this._timer);
    this._timer = null;
    this._open();
  }

  /** Drop the current connection and reconnect (for tests and the UI). */
  reconnect() {
    if (this._closedByUser) return this.connect();
    const ws = this._ws;
    if (ws) {
      try {
        ws.close(4000, "reconnect");
      } catch {}
      // do not wait for the close handshake
      detach(ws);
      this._onClose(4000, "reconnect");
    } else {
      this._reconnectNow();
    }
  }

  _setStatus(s) {
    if (this.status === s) return;
    this.status = s;
    this.emit("status", s);
  }

  _send(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  _startHeartbeat(hbMs) {
    this._stopHeartbeat();
    const idle = Math.max(1000, hbMs || 30000);
    const tick = Math.min(idle / 2, 5000);
    this._hbTimer = setInterval(() => {
      if (!this._ready) return;
      const silent = Date.now() - this._lastFrameAt;
      if (this._pingOut) {
        if (silent > idle + this.opts.pingTimeoutMs) {
          // half-open connection: give up on it
          this.reconnect();
        }
      } else if (silent > idle + 1000) {
        this._pingOut = true;
        this._send({ type: "ping", id: `${this._idPrefix}-hb` });
      }
    }, tick);
    if (this._hbTimer.unref) this._hbTimer.unref();
  }

  _stopHeartbeat() {
    clearInterval(this._hbTimer);
    this._hbTimer = null;
    this._pingOut = false;
  }

  // ---- incoming -----------------------------------------------------

  _onFrame(data) {
    this._lastFrameAt = Date.now();
    this._pingOut = false;
    if (typeof data !== "string") {
      try {
        data = new TextDecoder().decode(data);
      } catch {
        return;
      }
    }
    let f;
    try {
      f = this._parse(data);
    } catch {
      return;
    }
    if (!f || typeof f !== "object") return;
    switch (f.type) {
      case "welcome":
        return this._onWelcome(f);
      case "message":
        return this._onMessage(f);
      case "joined":
        return this._onJoined(f);
      case "ack":
        return this._onAck(f);
      case "error":
        return this._onError(f);
      case "user_joined":
      case "user_left":
      case "typing":
      case "read":
        return this.emit(f.type, f);
      default:
        if (f.id != null) this._resolveRequest(f);
        else this.emit("frame", f);
    }
  }

  _onWelcome(f) {
    const prevUser = this.welcome && this.welcome.user;
    this.welcome = f;
    this._ready = true;
    this._everWelcomed = true;
    this._attempt = 0;
    this._failsBeforeWelcome = 0;
    this._tokenFresh = false;
    this._startHeartbeat(f.heartbeat_ms);
    if (prevUser && prevUser !== f.user) {
      // a different identity (e.g. a new guest token): positions are not ours
      for (const r of [...this._rooms.values()]) {
        if (!r.wanted) this._rooms.delete(r.room);
        r.last = null;
        r.epoch = null;
        r.buffer.clear();
      }
      this._dmBaselined = false;
    }
    for (const rec of this._outbox) {
      if (rec.kind === "dm" && !rec.room) rec.room = dmRoom(f.user, rec.to);
    }
    this._setStatus("open");
    this.emit("welcome", f);
    for (const w of this._connectWaiters) w.resolve(f);
    this._connectWaiters = [];

    // 1. rejoin every room the application has joined, resuming from the
    //    last seq seen
    for (const r of this._rooms.values()) {
      if (r.wanted) this._sendJoin(r);
    }
    // 2. dm rooms are delivered without joining: catch them up through
    //    `rooms` (their latest seq) and `history`
    this._dmCatchUp();
    // 3. read markers made while offline
    for (const [room, seq] of this._readQueue) this._send({ type: "read", room, seq });
    this._readQueue.clear();
    // 4. requests made while offline, or cut off by the disconnect
    for (const [id, req] of this._requests) {
      if (!req.sent && !req.internal) req.sent = this._send({ ...req.frame, id });
    }
    // 5. publishes: those for rooms not being rejoined go now, the others
    //    once their room's `joined` is in
    this._flushOutbox();
  }

  _room(room) {
    let r = this._rooms.get(room);
    if (!r) {
      r = {
        room,
        wanted: false, // application asked to join (rejoined on reconnect)
        ready: false, // joined on this connection
        joinId: null,
        last: null, // last seq emitted to the application (null: no position)
        epoch: null,
        buffer: new Map(), // seq -> message held back until the gap closes
        gapTimer: null,
        filling: false,
        catchUp: null, // seq the room must reach before lost-ack checks
        joinWaiters: [],
      };
      this._rooms.set(room, r);
    }
    return r;
  }

  _sendJoin(r) {
    const id = this._nextId();
    r.joinId = id;
    r.ready = false;
    const frame = { type: "join", room: r.room };
    if (r.last != null && r.last > 0) frame.since = r.last;
    if (this.opts.reads) frame.reads = true;
    this._send({ ...frame, id });
  }

  _onJoined(f) {
    const r = this._rooms.get(f.room);
    const req = f.id != null ? this._requests.get(String(f.id)) : null;
    if (!r || (f.id != null && String(f.id) !== r.joinId && !req)) {
      if (req) this._resolveRequest(f);
      return;
    }
    r.ready = true;
    const prevEpoch = r.epoch;
    r.epoch = f.epoch;
    const epochChanged = prevEpoch != null && f.epoch !== prevEpoch;
    if (epochChanged || (r.last != null && f.seq < r.last)) {
      // the room's history was lost and numbering restarted: our position
      // means nothing. Start at the new epoch's current seq; the app reloads.
      const previous = r.last;
      r.last = f.seq;
      for (const s of [...r.buffer.keys()]) if (s <= f.seq) r.buffer.delete(s);
      // in-flight publishes from before cannot be found any more
      for (const rec of this._outbox) {
        if (rec.room === r.room && rec.state === "unknown") rec.afterSeq = -1;
      }
      this.emit("epoch", { room: r.room, epoch: f.epoch, previous: prevEpoch, seq: f.seq, previousSeq: previous });
    } else if (r.last == null) {
      r.last = f.seq;
      for (const s of [...r.buffer.keys()]) if (s <= f.seq) r.buffer.delete(s);
    }
    r.catchUp = f.seq;
    // the replay should bring the room up to f.seq; if it does not, fetch
    // the rest with history (and then settle what is still in doubt)
    clearTimeout(r.catchUpTimer);
    r.catchUpTimer = setTimeout(() => {
      if (r.catchUp != null && r.last != null && r.last < r.catchUp) this._fill(r, r.catchUp);
    }, this.opts.catchUpTimeoutMs);
    this.emit("joined", f);
    for (const w of r.joinWaiters) w.resolve(f);
    r.joinWaiters = [];
    this._drain(r);
    this._checkCaughtUp(r);
    this._flushOutbox();
  }

  _onMessage(m) {
    if (typeof m.room !== "string" || typeof m.seq !== "number") return;
    const r = this._room(m.room);
    this._accept(r, m);
  }

  /** Route a message (live, replayed, or from a gap fill) through ordering. */
  _accept(r, m) {
    if (r.last == null) {
      if (r.joinId != null && !r.ready) {
        // joining without a position: wait for `joined` to set it
        r.buffer.set(m.seq, m);
        return;
      }
      // first message of a room we had no position in (a new dm)
      r.last = m.seq - 1;
    }
    if (m.seq <= r.last) return; // already delivered
    if (m.seq === r.last + 1) {
      this._deliver(r, m);
      this._drain(r);
    } else {
      r.buffer.set(m.seq, m);
      this._scheduleGapFill(r);
    }
  }

  _deliver(r, m) {
    r.last = m.seq;
    const msg = { ...m };
    delete msg.type;
    this._matchUnknown(msg);
    this.emit("message", msg);
    this._checkCaughtUp(r);
  }

  _drain(r) {
    while (r.buffer.size && r.last != null) {
      const next = r.buffer.get(r.last + 1);
      if (next) {
        r.buffer.delete(r.last + 1);
        this._deliver(r, next);
        continue;
      }
      // discard anything at or below the position
      let min = Infinity;
      for (const s of [...r.buffer.keys()]) {
        if (s <= r.last) r.buffer.delete(s);
        else if (s < min) min = s;
      }
      if (r.buffer.size) this._scheduleGapFill(r);
      break;
    }
  }

  _scheduleGapFill(r) {
    if (r.gapTimer || r.filling) return;
    r.gapTimer = setTimeout(() => {
      r.gapTimer = null;
      this._fill(r);
    }, this.opts.gapFillDelayMs);
  }

  /**
   * Fetch the messages a room is missing with `history`: up to `target`,
   * and up to the oldest message held back in its buffer.
   */
  async _fill(r, target = 0) {
    r.fillTarget = Math.max(r.fillTarget || 0, target);
    if (r.filling || !this._ready) return;
    // a rejoin in progress brings the replay itself
    if (r.wanted && !r.ready) return;
    r.filling = true;
    try {
      for (let guard = 0; guard < 100000; guard++) {
        let goal = r.fillTarget;
        for (const s of r.buffer.keys()) goal = Math.max(goal, s - 1);
        if (r.last == null || r.last >= goal) break;
        const after = r.last;
        const h = await this._request({ type: "history", room: r.room, after, limit: 100 }, true);
        const msgs = (Array.isArray(h.messages) ? h.messages : [])
          .filter((m) => m && typeof m.seq === "number")
          .sort((a, b) => a.seq - b.seq);
        for (const m of msgs) this._accept(r, { ...m, room: r.room });
        if (r.last === after) {
          // the next message is no longer stored (retention): skip ahead
          let next = msgs.length ? msgs[0].seq : Infinity;
          for (const s of r.buffer.keys()) next = Math.min(next, s);
          if (next === Infinity || next <= after + 1) break;
          this._skip(r, next - 1);
          for (const m of msgs) this._accept(r, { ...m, room: r.room });
        }
      }
      r.fillTarget = 0;
    } catch (e) {
      if (!["offline", "disconnected", "closed"].includes(e && e.code)) {
        // history is not available to us: deliver what we have
        let next = Infinity;
        for (const s of r.buffer.keys()) next = Math.min(next, s);
        if (next !== Infinity && r.last != null && next > r.last + 1) this._skip(r, next - 1);
        r.fillTarget = 0;
      }
    } finally {
      r.filling = false;
      if (r.buffer.size) this._drain(r);
      // what history could not bring will not come: settle what is in doubt
      this._checkCaughtUp(r, !r.buffer.size);
    }
  }

  _skip(r, to) {
    this.emit("gap", { room: r.room, from: r.last + 1, to });
    r.last = to;
    this._drain(r);
  }

  async _dmCatchUp() {
    let list;
    try {
      list = await this._request({ type: "rooms" }, true, (f) => f.rooms);
    } catch {
      return;
    }
    if (!Array.isArray(list)) return;
    const first = !this._dmBaselined;
    this._dmBaselined = true;
    const listed = new Set();
    for (const it of list) {
      if (!it || typeof it.room !== "string" || !it.room.startsWith("dm:")) continue;
      listed.add(it.room);
      const r = this._room(it.room);
      if (r.wanted) continue; // rejoined with `since` instead
      const seq = typeof it.seq === "number" ? it.seq : 0;
      if (first && r.last == null) {
        // first connection: everything so far is history, not news
        r.last = seq;
        continue;
      }
      if (r.last == null) r.last = 0; // appeared while we were away
      if (seq < r.last) {
        // the dm's history was lost (e.g. a memory store restarted)
        const previousSeq = r.last;
        r.last = seq;
        for (const s of [...r.buffer.keys()]) if (s <= seq) r.buffer.delete(s);
        this.emit("epoch", { room: r.room, epoch: null, previous: null, seq, previousSeq });
      }
      r.catchUp = seq;
      if (seq > r.last) this._fill(r, seq);
      else this._checkCaughtUp(r);
    }
    // dms in doubt to a room the server does not list were never stored
    for (const rec of this._outbox) {
      if (rec.state === "unknown" && rec.room && rec.room.startsWith("dm:")) this._room(rec.room);
    }
    for (const r of this._rooms.values()) {
      if (r.room.startsWith("dm:") && !r.wanted && !listed.has(r.room)) {
        if (r.last == null) r.last = 0;
        r.catchUp = r.last;
        this._checkCaughtUp(r);
      }
    }
  }

  /** After a rejoin, publishes in doubt that were not replayed are reported. */
  _checkCaughtUp(r, force = false) {
    if (r.catchUp == null || r.last == null || (r.last < r.catchUp && !force)) return;
    r.catchUp = null;
    clearTimeout(r.catchUpTimer);
    for (const rec of this._outbox.slice()) {
      if (rec.room === r.room && rec.state === "unknown" && !rec.reported) {
        rec.reported = true;
        rec.reject(
          new CoreChatError(
            "unconfirmed",
            "the connection dropped before the server acknowledged this message, and it was not found after reconnecting; it was not resent",
          ),
        );
        this.emit("pending", rec);
      }
    }
  }

  _matchUnknown(msg) {
    if (!this.welcome || msg.from !== this.welcome.user) return;
    let json;
    for (const rec of this._outbox) {
      if (rec.state !== "unknown" || rec.room !== msg.room) continue;
      if (rec.afterSeq != null && msg.seq <= rec.afterSeq) continue;
      if (json === undefined) json = stableJson(msg.body);
      if (rec.json !== json) continue;
      const ack = { id: rec.id, room: msg.room, seq: msg.seq, ts: msg.ts, recovered: true };
      this._settle(rec, "acked", ack);
      return;
    }
  }

  _onAck(f) {
    const id = f.id != null ? String(f.id) : null;
    const rec = id ? this._outbox.find((x) => x.id === id && x.state === "sent" && x.conn === this._conn) : null;
    if (!rec) {
      if (id && this._requests.has(id)) this._resolveRequest(f);
      return;
    }
    if (!rec.room) rec.room = f.room;
    this._settle(rec, "acked", { id: rec.id, room: f.room, seq: f.seq, ts: f.ts });
  }

  _onError(f) {
    const id = f.id != null ? String(f.id) : null;
    const err = new CoreChatError(f.code || "error", f.message || f.code, {
      retryAfterMs: f.retry_after_ms,
      reply: f,
    });
    if (id) {
      const rec = this._outbox.find((x) => x.id === id && x.state === "sent" && x.conn === this._conn);
      if (rec) {
        this._settle(rec, "failed", null, err);
        return;
      }
      for (const r of this._rooms.values()) {
        if (r.joinId === id) {
          r.joinId = null;
          r.wanted = false;
          for (const w of r.joinWaiters) w.reject(err);
          r.joinWaiters = [];
          // publishes queued for it would only get not_joined
          this._flushOutbox();
          this.emit("error", err);
          return;
        }
      }
      const req = this._requests.get(id);
      if (req) {
        this._requests.delete(id);
        clearTimeout(req.timer);
        req.reject(err);
        return;
      }
      if (id === `${this._idPrefix}-hb`) return;
    }
    this.emit("error", err);
  }

  _resolveRequest(f) {
    const id = String(f.id);
    if (id === `${this._idPrefix}-hb`) return;
    const req = this._requests.get(id);
    if (!req) return;
    this._requests.delete(id);
    clearTimeout(req.timer);
    req.resolve(req.map ? req.map(f) : f);
  }

  // ---- requests -----------------------------------------------------

  _nextId() {
    return `${this._idPrefix}-${++this._seq}`;
  }

  /**
   * Send a request and wait for the reply with its id. Requests made while
   * offline wait for the connection; one cut off by a disconnect is sent
   * again on the next connection (only used for requests that are safe to
   * repeat).
   */
  _request(frame, internal = false, map = null) {
    return new Promise((resolve, reject) => {
      if (this._closedByUser && !this._ws) {
        reject(new CoreChatError("closed", "client closed"));
        return;
      }
      const id = this._nextId();
      const req = { frame, resolve, reject, map, internal, sent: false, timer: null };
      req.timer = setTimeout(() => {
        this._requests.delete(id);
        reject(new CoreChatError("timeout", `no reply to ${frame.type} in ${this.opts.requestTimeoutMs} ms`));
      }, this.opts.requestTimeoutMs);
      this._requests.set(id, req);
      if (this._ready) req.sent = this._send({ ...frame, id });
      // internal requests are only useful on the connection that made them
      if (internal && !req.sent) {
        this._requests.delete(id);
        clearTimeout(req.timer);
        reject(new CoreChatError("offline", "not connected"));
      }
    });
  }

  /**
   * Join a room (and rejoin it after every reconnect). Resolves with the
   * `joined` reply. `since`: resume after this seq (default: the last seq
   * this client has seen of the room, if any).
   * @param {string} room
   * @param {{since?: number}} [opts]
   * @returns {Promise<Joined>}
   */
  join(room, opts = {}) {
    const r = this._room(room);
    r.wanted = true;
    if (opts.since != null) {
      r.last = opts.since;
      r.buffer.clear();
    }
    const p = new Promise((resolve, reject) => r.joinWaiters.push({ resolve, reject }));
    if (this._ready) this._sendJoin(r);
    else r.joinId = null;
    if (this._closedByUser) {
      const err = new CoreChatError("closed", "client closed");
      for (const w of r.joinWaiters) w.reject(err);
      r.joinWaiters = [];
    }
    return p;
  }

  /**
   * Leave a room (it is no longer rejoined). Resolves with `left`, or at
   * once when offline.
   * @param {string} room
   */
  async leave(room) {
    const r = this._rooms.get(room);
    if (r) {
      r.wanted = false;
      r.ready = false;
      r.joinId = null;
      const err = new CoreChatError("left", "left the room");
      for (const w of r.joinWaiters) w.reject(err);
      r.joinWaiters = [];
      if (!room.startsWith("dm:")) {
        // we will not hear from it any more: forget the position
        clearTimeout(r.gapTimer);
        this._rooms.delete(room);
      }
    }
    if (!this._ready) return { type: "left", room };
    return this._request({ type: "leave", room }, true);
  }

  /**
   * Publish to a joined room. Resolves with the ack; see the top of this
   * file for what happens when the connection drops. The promise has the
   * record's client id as `.id`.
   * @param {string} room
   * @param {*} body
   * @param {{id?: string}} [opts]
   * @returns {Promise<Ack> & {id: string}}
   */
  publish(room, body, opts = {}) {
    return this._enqueue({ kind: "publish", room, body }, opts);
  }

  /**
   * Send a direct message. Resolves with the ack (its `room` is the dm room).
   * @param {string} user
   * @param {*} body
   * @param {{id?: string}} [opts]
   * @returns {Promise<Ack> & {id: string}}
   */
  dm(user, body, opts = {}) {
    const room = this.welcome ? dmRoom(this.welcome.user, user) : null;
    return this._enqueue({ kind: "dm", room, to: user, body }, opts);
  }

  _enqueue(rec, opts) {
    rec.id = opts.id != null ? String(opts.id) : `${this._idPrefix}-p${++this._seq}`;
    rec.state = "queued";
    rec.createdAt = Date.now();
    rec.json = stableJson(rec.body);
    let resolve, reject;
    const p = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    p.catch(() => {}); // settled through `pending` too; avoid unhandled noise
    Object.defineProperty(rec, "resolve", { value: resolve, enumerable: false, writable: true });
    Object.defineProperty(rec, "reject", { value: reject, enumerable: false, writable: true });
    p.id = rec.id;
    p.record = rec;
    if (this._closedByUser) {
      this._settle(rec, "failed", null, new CoreChatError("closed", "client closed"));
      return p;
    }
    this._outbox.push(rec);
    this.emit("pending", rec);
    this._flushOutbox();
    return p;
  }

  _flushOutbox() {
    if (!this._ready) return;
    for (const rec of this._outbox) {
      if (rec.state !== "queued") continue;
      if (rec.kind === "publish") {
        const r = this._rooms.get(rec.room);
        // wait for the rejoin of a room the app has joined
        if (r && r.wanted && !r.ready) continue;
      }
      const r = rec.room ? this._rooms.get(rec.room) : null;
      rec.afterSeq = r && r.last != null ? r.last : 0;
      const frame =
        rec.kind === "dm"
          ? { type: "dm", id: rec.id, to: rec.to, body: rec.body }
          : { type: "publish", id: rec.id, room: rec.room, body: rec.body };
      if (this._send(frame)) {
        rec.state = "sent";
        rec.conn = this._conn;
        this.emit("pending", rec);
      }
    }
  }

  _settle(rec, state, ack, err) {
    const wasReported = rec.reported;
    rec.state = state;
    if (ack) rec.ack = ack;
    if (err) rec.error = err;
    const i = this._outbox.indexOf(rec);
    if (i >= 0) this._outbox.splice(i, 1);
    if (!wasReported) {
      if (state === "acked") rec.resolve(ack);
      else rec.reject(err);
    }
    this.emit("pending", rec);
  }

  /**
   * Send again a record whose delivery is unknown (or that failed), as a
   * new publish with a new id. May duplicate the message.
   * @param {PendingRecord} rec
   */
  resend(rec) {
    const i = this._outbox.indexOf(rec);
    if (i >= 0) this._outbox.splice(i, 1);
    if (rec.state === "unknown") {
      rec.state = "failed";
      this.emit("pending", rec);
    }
    return rec.kind === "dm" ? this.dm(rec.to, rec.body) : this.publish(rec.room, rec.body);
  }

  /**
   * Forget a record whose delivery is unknown.
   * @param {PendingRecord} rec
   */
  discard(rec) {
    const i = this._outbox.indexOf(rec);
    if (i >= 0) this._outbox.splice(i, 1);
    if (rec.state === "queued" || rec.state === "unknown") {
      rec.state = "failed";
      this.emit("pending", rec);
    }
  }

  /**
   * Messages of a room: the latest `limit`, or those `before`/`after` a seq.
   * @param {string} room
   * @param {{before?: number, after?: number, limit?: number}} [opts]
   * @returns {Promise<{room: string, messages: Message[], has_more: boolean}>}
   */
  history(room, opts = {}) {
    const f = { type: "history", room };
    if (opts.before != null) f.before = opts.before;
    if (opts.after != null) f.after = opts.after;
    if (opts.limit != null) f.limit = opts.limit;
    return this._request(f, false, (h) => ({
      room: h.room,
      messages: (h.messages || []).map((m) => ({ ...m, room: m.room || h.room })),
      has_more: !!h.has_more,
    }));
  }

  /**
   * The rooms this user has joined and its dm rooms, with latest seq and
   * read marker.
   * @returns {Promise<Array<{room: string, seq: number, read: number}>>}
   */
  rooms() {
    return this._request({ type: "rooms" }, false, (f) => f.rooms || []);
  }

  /**
   * Users currently joined to a room.
   * @param {string} room
   * @returns {Promise<Array<{user: string, name: string}>>}
   */
  presence(room) {
    return this._request({ type: "presence", room }, false, (f) => f.users || []);
  }

  /**
   * Tell the room's other members this user is typing. Dropped when
   * offline. Returns whether it was sent.
   * @param {string} room
   */
  typing(room) {
    if (!this._ready) return false;
    return this._send({ type: "typing", room });
  }

  /**
   * Store this user's read marker for a room and tell the other members.
   * Made while offline, the latest marker per room is sent on reconnect.
   * @param {string} room
   * @param {number} seq
   */
  read(room, seq) {
    if (this._ready && this._send({ type: "read", room, seq })) return true;
    const prev = this._readQueue.get(room) || 0;
    if (seq > prev) this._readQueue.set(room, seq);
    return false;
  }

  /**
   * Round trip to the server. Resolves with the time it took in ms.
   * @returns {Promise<number>}
   */
  async ping() {
    const t0 = Date.now();
    await this._request({ type: "ping" });
    return Date.now() - t0;
  }
}

function noop() {}

function detach(ws) {
  // keep an error handler: the `ws` package throws on an unhandled error
  ws.onmessage = noop;
  ws.onclose = noop;
  ws.onerror = noop;
  ws.onopen = noop;
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc || !loc.host) return null;
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
}

export default CoreChat;
