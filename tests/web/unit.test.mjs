// Unit tests of web/corechat.js against a scripted fake server: the frames
// are checked and answered by hand, so every corner of the ordering, resume,
// epoch and offline-queue logic is exercised deterministically.
import { test, describe, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { FakeServer, WebSocketImpl, CoreChat, dmRoom, dmPeer, backoffDelay, record, waitFor, sleep, roundTrip } from "./helpers.mjs";

let fake;
const clients = [];

function client(opts = {}) {
  const c = new CoreChat({
    url: fake.url,
    token: "t1",
    WebSocket: WebSocketImpl,
    baseMs: 20,
    maxMs: 50,
    gapFillDelayMs: 50,
    ...opts,
  });
  clients.push(c);
  return c;
}

const msg = (room, seq, extra = {}) => ({
  type: "message",
  room,
  seq,
  from: "bob",
  name: "Bob",
  ts: 1700000000000 + seq,
  body: { text: `m${seq}` },
  ...extra,
});

/** Accept a connection as `user` and answer its initial `rooms` request. */
async function accept(n, { user = "alice", rooms = [] } = {}) {
  const c = await fake.conn(n);
  c.welcome(user);
  const r = await c.next("rooms");
  c.send({ type: "rooms", id: r.id, rooms });
  return c;
}

async function joinOn(conn, room, { seq = 0, epoch = "e1", replay = [] } = {}) {
  const j = await conn.next((f) => f.type === "join" && f.room === room);
  conn.send({ type: "joined", id: j.id, room, seq, epoch, members: 1, read: 0, recovered: true });
  for (const m of replay) conn.send(m);
  return j;
}

const seqs = (rec, room) => rec.message.filter((m) => !room || m.room === room).map((m) => m.seq);

beforeEach(async () => {
  fake = await new FakeServer().start();
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await fake.stop();
});

describe("helpers", () => {
  test("dmRoom orders the two ids by bytes", () => {
    assert.equal(dmRoom("bob", "alice"), "dm:alice:bob");
    assert.equal(dmRoom("alice", "bob"), "dm:alice:bob");
    assert.equal(dmRoom("B", "a"), "dm:B:a"); // uppercase sorts first in byte order
    assert.equal(dmPeer("dm:alice:bob", "alice"), "bob");
    assert.equal(dmPeer("dm:alice:bob", "bob"), "alice");
    assert.equal(dmPeer("general", "bob"), null);
  });

  test("backoff is exponential with full jitter", () => {
    assert.equal(backoffDelay(0, 500, 30000, () => 0), 0);
    assert.equal(backoffDelay(0, 500, 30000, () => 0.999999), 499);
    assert.equal(backoffDelay(3, 500, 30000, () => 0.5), 2000);
    assert.equal(backoffDelay(20, 500, 30000, () => 0.5), 15000); // capped
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(4, 100, 30000);
      assert.ok(d >= 0 && d < 1600);
    }
  });
});

describe("requests", () => {
  test("replies are matched by id; errors reject with code and retryAfterMs", async () => {
    const chat = client();
    const c = await accept(0);
    const pingP = chat.ping();
    const hP = chat.history("r", { before: 10, limit: 5 });
    const pr = chat.presence("r");
    const h = await c.next("history");
    assert.deepEqual({ room: h.room, before: h.before, limit: h.limit }, { room: "r", before: 10, limit: 5 });
    const p = await c.next("presence");
    const ping = await c.next("ping");
    // answer out of order
    c.send({ type: "error", id: p.id, code: "not_joined", message: "join first" });
    c.send({ type: "pong", id: ping.id });
    c.send({ type: "history", id: h.id, room: "r", messages: [{ seq: 8, from: "bob", name: "Bob", ts: 1, body: 1 }], has_more: true });
    assert.equal(typeof (await pingP), "number");
    const hist = await hP;
    assert.equal(hist.has_more, true);
    assert.equal(hist.messages[0].room, "r");
    await assert.rejects(pr, (e) => e.code === "not_joined" && e.message === "join first");

    const pub = chat.publish("r", { text: "x" });
    const f = await c.next("publish");
    assert.equal(f.id, pub.id);
    c.send({ type: "error", id: f.id, code: "rate_limited", message: "slow down", retry_after_ms: 250 });
    await assert.rejects(pub, (e) => e.code === "rate_limited" && e.retryAfterMs === 250);
    assert.equal(pub.record.state, "failed");
  });

  test("requests made while offline are sent once connected", async () => {
    const chat = client({ autoConnect: false });
    const hP = chat.history("r");
    const rP = chat.rooms();
    chat.connect();
    const c = await fake.conn(0);
    await sleep(50);
    assert.equal(c.frames.length, 0, "nothing is sent before welcome");
    c.welcome();
    const internal = await c.next("rooms");
    c.send({ type: "rooms", id: internal.id, rooms: [] });
    const h = await c.next("history");
    const r = await c.next("rooms");
    c.send({ type: "rooms", id: r.id, rooms: [{ room: "r", seq: 3, read: 1 }] });
    c.send({ type: "history", id: h.id, room: "r", messages: [], has_more: false });
    assert.deepEqual(await rP, [{ room: "r", seq: 3, read: 1 }]);
    assert.equal((await hP).messages.length, 0);
  });
});

describe("ordering", () => {
  test("messages are delivered once, in seq order; duplicates dropped", async () => {
    const chat = client();
    const rec = record(chat);
    const c = await accept(0);
    const joined = chat.join("room1");
    await joinOn(c, "room1", { seq: 0 });
    assert.equal((await joined).epoch, "e1");
    for (const s of [1, 2, 2, 1, 3]) c.send(msg("room1", s));
    await waitFor(() => rec.message.length >= 3);
    await sleep(50);
    await roundTrip(chat, c); // sentinel: all sent before it has been handled
    assert.deepEqual(seqs(rec), [1, 2, 3]);
    assert.equal(chat.lastSeq("room1"), 3);
    assert.equal(rec.message[0].type, undefined);
    assert.deepEqual(rec.message[0].body, { text: "m1" });
  });

  test("a gap is held back and filled from history", async () => {
    const chat = client();
    const rec = record(chat);
    const c = await accept(0);
    chat.join("g");
    await joinOn(c, "g", { seq: 0 });
    c.send(msg("g", 1));
    c.send(msg("g", 4));
    c.send(msg("g", 5));
    const h = await c.next("history");
    assert.equal(h.room, "g");
    assert.equal(h.after, 1);
    assert.deepEqual(seqs(rec), [1], "4 and 5 wait for 2 and 3");
    c.send({ type: "history", id: h.id, room: "g", messages: [2, 3, 4].map((s) => { const m = msg("g", s); delete m.type; delete m.room; return m; }), has_more: false });
    await waitFor(() => rec.message.length >= 5);
    c.send(msg("g", 6));
    await waitFor(() => rec.message.length >= 6);
    assert.deepEqual(seqs(rec), [1, 2, 3, 4, 5, 6]);
  });

  test("a gap the store no longer holds is skipped with a gap event", async () => {
    const chat = client();
    const rec = record(chat);
    const c = await accept(0);
    chat.join("g");
    await joinOn(c, "g", { seq: 10 });
    c.send(msg("g", 14));
    const h = await c.next("history");
    assert.equal(h.after, 10);
    c.send({ type: "history", id: h.id, room: "g", messages: [{ ...msg("g", 13), type: undefined }], has_more: false });
    await waitFor(() => rec.message.length >= 2);
    assert.deepEqual(seqs(rec), [13, 14]);
    assert.deepEqual(rec.gap, [{ room: "g", from: 11, to: 12 }]);
  });
});

describe("reconnect and resume", () => {
  test("rejoins every room with since = last seq, exactly once across closes", async () => {
    const chat = client();
    const rec = record(chat);
    const c0 = await accept(0);
    chat.join("a");
    chat.join("b");
    await joinOn(c0, "a", { seq: 0 });
    await joinOn(c0, "b", { seq: 5 });
    c0.send(msg("a", 1));
    c0.send(msg("a", 2));
    c0.send(msg("b", 6));
    await waitFor(() => rec.message.length >= 3);
    c0.close(1001, "going away");

    const c1 = await accept(1);
    const ja = await joinOn(c1, "a", { seq: 4, replay: [msg("a", 2), msg("a", 3), msg("a", 4)] });
    const jb = await joinOn(c1, "b", { seq: 6 });
    assert.equal(ja.since, 2);
    assert.equal(jb.since, 6);
    c1.send(msg("a", 4)); // a live duplicate of the replay's last
    c1.send(msg("a", 5));
    await waitFor(() => seqs(rec, "a").length >= 5);

    c1.close(1013, "slow consumer");
    const c2 = await accept(2);
    const ja2 = await joinOn(c2, "a", { seq: 5 });
    assert.equal(ja2.since, 5);
    await joinOn(c2, "b", { seq: 6 });
    await sleep(50);
    await roundTrip(chat, c2); // sentinel: all sent before it has been handled
    assert.deepEqual(seqs(rec, "a"), [1, 2, 3, 4, 5]);
    assert.deepEqual(seqs(rec, "b"), [6]);
    assert.deepEqual(
      rec.status.filter((s, i, a) => s !== a[i - 1]),
      ["open", "reconnecting", "open", "reconnecting", "open"],
    );
  });

  test("the reads option asks every join (and rejoin) for the members' read markers", async () => {
    const plain = client();
    const p0 = await accept(0);
    plain.join("a");
    const jp = await joinOn(p0, "a");
    assert.equal(jp.reads, undefined, "the default join frame has no reads field");

    const chat = client({ reads: true });
    const c1 = await accept(1);
    const joined = chat.join("r");
    const j = await c1.next((f) => f.type === "join" && f.room === "r");
    assert.equal(j.reads, true);
    c1.send({ type: "joined", id: j.id, room: "r", seq: 3, epoch: "e1", members: 2, read: 1, recovered: true, reads: { bob: 3 } });
    assert.deepEqual((await joined).reads, { bob: 3 });
    c1.close(1001, "going away");
    const c2 = await accept(2);
    const j2 = await joinOn(c2, "r", { seq: 3 });
    assert.equal(j2.reads, true, "the rejoin asks again");
  });

  test("a new epoch drops since, resets the position and emits epoch", async () => {
    const chat = client();
    const rec = record(chat);
    const c0 = await accept(0);
    chat.join("e");
    await joinOn(c0, "e", { seq: 0, epoch: "old" });
    for (const s of [1, 2, 3, 4, 5]) c0.send(msg("e", s));
    await waitFor(() => rec.message.length >= 5);
    c0.close(1001);

    const c1 = await accept(1);
    // history was lost: the new epoch has 2 messages, fewer than we had
    const j = await joinOn(c1, "e", { seq: 2, epoch: "new" });
    assert.equal(j.since, 5);
    await waitFor(() => rec.epoch.length === 1);
    assert.deepEqual(rec.epoch[0], { room: "e", epoch: "new", previous: "old", seq: 2, previousSeq: 5 });
    assert.equal(chat.epoch("e"), "new");
    assert.equal(chat.lastSeq("e"), 2);
    c1.send(msg("e", 3));
    await waitFor(() => rec.message.length >= 6);
    assert.deepEqual(seqs(rec), [1, 2, 3, 4, 5, 3], "seq 3 of the new epoch is delivered");

    // and a new epoch with more messages than we had is detected too
    c1.close(1001);
    const c2 = await accept(2);
    const j2 = await joinOn(c2, "e", { seq: 9, epoch: "newer", replay: [msg("e", 4), msg("e", 9)] });
    assert.equal(j2.since, 3);
    await waitFor(() => rec.epoch.length === 2);
    c2.send(msg("e", 10));
    await waitFor(() => rec.message.length >= 7);
    await sleep(80);
    await roundTrip(chat, c2); // sentinel: all sent before it has been handled
    assert.deepEqual(seqs(rec).slice(6), [10], "the replay of the old position is not delivered");
  });

  test("close 1008 token expired asks getToken for a new token", async () => {
    let n = 0;
    const chat = client({ token: undefined, getToken: async () => `tok${++n}` });
    const c0 = await accept(0);
    assert.equal(c0.token, "tok1");
    chat.join("r");
    await joinOn(c0, "r");
    c0.close(1008, "token expired");
    const c1 = await accept(1);
    assert.equal(c1.token, "tok2");
    await joinOn(c1, "r");
    c1.close(1001, "going away");
    const c2 = await accept(2);
    assert.equal(c2.token, "tok2", "a plain reconnect keeps the token");
    await joinOn(c2, "r");
  });

  test("token expired without getToken closes for good", async () => {
    const chat = client();
    const rec = record(chat);
    const c0 = await accept(0);
    c0.close(1008, "token expired");
    await waitFor(() => chat.status === "closed");
    assert.ok(rec.error.some((e) => e.code === "token_expired"));
    await sleep(100);
    assert.equal(fake.conns.length, 1);
  });

  test("dm rooms are caught up through rooms and history", async () => {
    const chat = client();
    const rec = record(chat);
    const room = dmRoom("alice", "bob");
    // on the first connection the dm's past is history, not news
    const c0 = await accept(0, { rooms: [{ room, seq: 2, read: 2 }] });
    await waitFor(() => chat.lastSeq(room) === 2);
    c0.send(msg(room, 3));
    await waitFor(() => rec.message.length === 1);
    c0.close(1006);
    const c1 = await fake.conn(1);
    c1.welcome("alice");
    const r = await c1.next("rooms");
    c1.send(msg(room, 7)); // live, before the catch-up is done
    c1.send({ type: "rooms", id: r.id, rooms: [{ room, seq: 6, read: 3 }, { room: "dm:alice:carol", seq: 1, read: 0 }] });
    const h1 = await c1.next((f) => f.type === "history" && f.room === room);
    assert.equal(h1.after, 3);
    const h2 = await c1.next((f) => f.type === "history" && f.room === "dm:alice:carol");
    assert.equal(h2.after, 0, "a dm that appeared while away is fetched whole");
    const strip = (m) => ({ ...m, type: undefined, room: undefined });
    c1.send({ type: "history", id: h1.id, room, messages: [4, 5, 6].map((s) => strip(msg(room, s))), has_more: false });
    c1.send({ type: "history", id: h2.id, room: "dm:alice:carol", messages: [strip(msg("x", 1))], has_more: false });
    await waitFor(() => rec.message.length >= 6);
    await sleep(50);
    await roundTrip(chat, c1); // sentinel: all sent before it has been handled
    assert.deepEqual(seqs(rec, room), [3, 4, 5, 6, 7]);
    assert.deepEqual(seqs(rec, "dm:alice:carol"), [1]);
  });
});

describe("offline queue", () => {
  test("publishes made offline are sent exactly once after the rejoin", async () => {
    const chat = client();
    const rec = record(chat);
    const c0 = await accept(0);
    chat.join("q");
    await joinOn(c0, "q", { seq: 0 });
    c0.close(1001);
    await waitFor(() => chat.status === "reconnecting");
    const p1 = chat.publish("q", { text: "one" });
    const p2 = chat.publish("q", { text: "two" });
    const d1 = chat.dm("bob", { text: "psst" });
    assert.equal(p1.record.state, "queued");
    assert.deepEqual(chat.pending.map((r) => r.state), ["queued", "queued", "queued"]);

    const c1 = await fake.conn(1);
    c1.welcome("alice");
    const r = await c1.next("rooms");
    const j = await c1.next("join");
    // the dm goes at once; the publishes wait for the room's rejoin
    const dmf = await c1.next("dm");
    assert.deepEqual({ id: dmf.id, to: dmf.to, body: dmf.body }, { id: d1.id, to: "bob", body: { text: "psst" } });
    await sleep(50);
    await roundTrip(chat, c1); // sentinel: all sent before it has been handled
    assert.equal(c1.all("publish").length, 0, "not before joined");
    c1.send({ type: "rooms", id: r.id, rooms: [] });
    c1.send({ type: "joined", id: j.id, room: "q", seq: 0, epoch: "e1", members: 1, read: 0, recovered: true });
    const f1 = await c1.next("publish");
    const f2 = await c1.next("publish");
    assert.deepEqual([f1.id, f1.body.text, f2.id, f2.body.text], [p1.id, "one", p2.id, "two"]);
    c1.send({ type: "ack", id: f1.id, room: "q", seq: 1, ts: 5 });
    c1.send(msg("q", 1, { from: "alice", body: { text: "one" } }));
    c1.send({ type: "ack", id: dmf.id, room: "dm:alice:bob", seq: 1, ts: 6 });
    assert.deepEqual(await p1, { id: p1.id, room: "q", seq: 1, ts: 5 });
    assert.equal((await d1).room, "dm:alice:bob");
    // the second one is in flight when the connection drops
    await waitFor(() => chat.lastSeq("q") === 1);
    c1.close(1006);
    const c2 = await accept(2);
    const j2 = await joinOn(c2, "q", { seq: 1 });
    assert.equal(j2.since, 1);
    await assert.rejects(p2, (e) => e.code === "unconfirmed");
    await sleep(50);
    await roundTrip(chat, c2); // sentinel: all sent before it has been handled
    assert.equal(c2.all("publish").length, 0, "an in-flight publish is never resent");
    assert.equal(chat.pending.length, 1);
    assert.equal(chat.pending[0].state, "unknown");
    assert.deepEqual(seqs(rec), [1]);
  });

  test("a publish whose ack was lost is confirmed from the resume replay", async () => {
    const chat = client();
    const c0 = await accept(0);
    chat.join("q");
    await joinOn(c0, "q", { seq: 3 });
    const p = chat.publish("q", { text: "hello", n: 1 });
    await c0.next("publish");
    c0.close(1006); // the server stored it as seq 4, but the ack was lost
    await waitFor(() => p.record.state === "unknown");
    const c1 = await accept(1);
    const j = await joinOn(c1, "q", {
      seq: 5,
      replay: [
        msg("q", 4, { from: "alice", body: { text: "hello", n: 1 } }),
        msg("q", 5, { from: "bob", body: { text: "hello", n: 1 } }),
      ],
    });
    assert.equal(j.since, 3);
    const ack = await p;
    assert.deepEqual(ack, { id: p.id, room: "q", seq: 4, ts: 1700000000004, recovered: true });
    assert.equal(chat.pending.length, 0);
    await sleep(50);
    await roundTrip(chat, c1); // sentinel: all sent before it has been handled
    assert.equal(c1.all("publish").length, 0);
  });

  test("a room whose replay falls short is caught up by history, then doubts are settled", async () => {
    const chat = client({ catchUpTimeoutMs: 100 });
    const rec = record(chat);
    const c0 = await accept(0);
    chat.join("q");
    await joinOn(c0, "q", { seq: 2 });
    const p = chat.publish("q", { text: "lost" });
    await c0.next("publish");
    c0.close(1006);
    const c1 = await accept(1);
    await joinOn(c1, "q", { seq: 4, replay: [msg("q", 3)] }); // 4 never comes
    const h = await c1.next("history");
    assert.equal(h.after, 3);
    c1.send({ type: "history", id: h.id, room: "q", messages: [], has_more: false });
    await assert.rejects(p, (e) => e.code === "unconfirmed");
    assert.deepEqual(seqs(rec), [3]);
  });

  test("close() fails what is queued", async () => {
    const chat = client({ autoConnect: false });
    const p = chat.publish("q", 1);
    chat.close();
    await assert.rejects(p, (e) => e.code === "closed");
  });
});

describe("liveness", () => {
  test("a silent connection is pinged and dropped when the ping is not answered", async () => {
    const chat = client({ pingTimeoutMs: 300 });
    const c0 = await fake.conn(0);
    c0.welcome("alice", { heartbeat_ms: 1000 });
    const r = await c0.next("rooms");
    c0.send({ type: "rooms", id: r.id, rooms: [] });
    const rec = record(chat, ["status", "disconnect"]);
    await c0.next("ping", 5000);
    // no pong: the client gives up on this connection (closes it, says so)
    // and opens another
    await waitFor(() => c0.closed, { timeout: 5000, what: "the unanswered connection closed by the client" });
    assert.ok(rec.disconnect.length >= 1, "a disconnect event");
    assert.ok(rec.status.includes("reconnecting"), `status went through reconnecting: ${rec.status}`);
    const c1 = await fake.conn(1, 8000);
    assert.equal(c0.closed, true);
    assert.equal(c1.closed, false, "the new connection is the live one");
  });
});

describe("a refused token", () => {
  /** A stand-in for fetch: answers /api/me with `status` and `{error}`. */
  function meStub(answers) {
    const calls = [];
    const fetch = async (url, init) => {
      calls.push({ url: String(url), auth: init && init.headers && init.headers.authorization });
      const a = answers[Math.min(calls.length - 1, answers.length - 1)];
      if (a === "down") throw new TypeError("fetch failed");
      return { status: a.status, json: async () => a.body };
    };
    return { fetch, calls };
  }

  test("a failed upgrade asks /api/me; a 401 stops reconnecting with auth_failed", async () => {
    const me = meStub([{ status: 401, body: { error: "bad signature" } }]);
    const chat = client({ fetch: me.fetch });
    const rec = record(chat, ["auth_failed", "status", "error"]);
    const pending = chat.publish("r", { text: "never" });
    const c0 = await fake.conn(0);
    c0.close(1006); // what a browser sees of an HTTP 401
    await waitFor(() => rec.auth_failed.length === 1, { what: "auth_failed" });
    assert.deepEqual(rec.auth_failed[0], { reason: "bad signature", status: 401 });
    assert.equal(me.calls.length, 1);
    assert.equal(me.calls[0].auth, "Bearer t1");
    assert.equal(me.calls[0].url, fake.url.replace("ws://", "http://").replace(/\/ws$/, "/api/me"));
    assert.equal(chat.status, "closed");
    await assert.rejects(pending, (e) => e.code === "auth_failed");
    await sleep(150);
    assert.equal(fake.conns.length, 1, "no reconnection after a refused token");
  });

  test("the server down (no answer, or not 401) reconnects as usual", async () => {
    const me = meStub(["down", { status: 503, body: {} }]);
    const chat = client({ fetch: me.fetch });
    const rec = record(chat, ["auth_failed"]);
    (await fake.conn(0)).close(1006);
    (await fake.conn(1)).close(1006);
    await accept(2);
    assert.equal(me.calls.length, 2);
    assert.equal(rec.auth_failed.length, 0);
    await waitFor(() => chat.status === "open");
  });

  test("a drop after welcome is not an auth question", async () => {
    const me = meStub([{ status: 401, body: { error: "token expired" } }]);
    const chat = client({ fetch: me.fetch });
    const c0 = await accept(0);
    c0.close(1006);
    await accept(1);
    assert.equal(me.calls.length, 0);
    await waitFor(() => chat.status === "open");
  });

  test("with getToken a refused token is replaced once, then auth_failed", async () => {
    const me = meStub([{ status: 401, body: { error: "token expired" } }]);
    let n = 0;
    const chat = client({ token: "old", getToken: async () => `tok${++n}`, fetch: me.fetch });
    const rec = record(chat, ["auth_failed"]);
    const c0 = await fake.conn(0);
    assert.equal(c0.token, "old");
    c0.close(1006);
    const c1 = await fake.conn(1);
    assert.equal(c1.token, "tok1", "a fresh token after the 401");
    c1.close(1006);
    await waitFor(() => rec.auth_failed.length === 1, { what: "auth_failed" });
    assert.equal(rec.auth_failed[0].reason, "token expired");
    assert.equal(me.calls.map((c) => c.auth).join(","), "Bearer old,Bearer tok1");
    await sleep(150);
    assert.equal(fake.conns.length, 2);
  });
});
