// Integration tests of web/corechat.js against the REAL server binary
// (target/debug/corechat, or $CORECHAT_BIN): reconnect and resume across
// server restarts and crashes, epoch changes, the offline queue, lost acks,
// dm catch-up and token expiry.
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { Server, Proxy, cliToken, record, waitFor, sleep, settle, dmRoom } from "./helpers.mjs";

const servers = [];
const clients = [];
const proxies = [];

async function server(o) {
  const s = new Server(o);
  servers.push(s);
  await s.start();
  return s;
}
async function proxy(s) {
  const p = await new Proxy(s.port).start();
  proxies.push(p);
  return p;
}
function client(s, opts = {}) {
  const c = s.client(opts);
  clients.push(c);
  return c;
}

async function cleanup() {
  for (const c of clients.splice(0)) c.close();
  for (const p of proxies.splice(0)) await p.stop();
  for (const s of servers.splice(0)) {
    await s.stop("SIGKILL");
    s.cleanup();
  }
}
after(cleanup);

/** Messages of a room as "seq:text", to compare with what was published. */
const texts = (rec, room) => rec.message.filter((m) => m.room === room).map((m) => m.body.text);
const seqs = (rec, room) => rec.message.filter((m) => m.room === room).map((m) => m.seq);
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

function assertExactlyOnceInOrder(rec, room, expectedTexts) {
  const got = texts(rec, room);
  assert.deepEqual(got, expectedTexts, `${room}: every message exactly once, in order`);
  const s = seqs(rec, room);
  for (let i = 1; i < s.length; i++) assert.equal(s[i], s[i - 1] + 1, `${room}: seqs ascend without gaps`);
}

describe("protocol basics", () => {
  test("welcome, join, publish, history, rooms, presence, ping, errors", async (t) => {
    const s = await server({ store: "memory" });
    const token = cliToken("alice", s.secret);
    const a = client(s, { token });
    const rec = record(a);
    const w = await a.connect();
    assert.equal(w.user, "alice");
    assert.ok(w.heartbeat_ms > 0);
    const j = await a.join("basics");
    assert.equal(j.room, "basics");
    assert.equal(j.seq, 0);
    assert.equal(typeof j.epoch, "string");
    const body = { text: "hello", nested: [1, { x: null }], s: "<b>&amp;</b>" };
    const ack = await a.publish("basics", body);
    assert.equal(ack.room, "basics");
    assert.equal(ack.seq, 1);
    await waitFor(() => rec.message.length === 1, { what: "own message" });
    assert.deepEqual(rec.message[0].body, body);
    assert.equal(rec.message[0].from, "alice");
    const h = await a.history("basics", { limit: 10 });
    assert.deepEqual(h.messages.map((m) => m.seq), [1]);
    assert.equal(h.has_more, false);
    assert.ok((await a.rooms()).some((r) => r.room === "basics" && r.seq === 1));
    assert.deepEqual((await a.presence("basics")).map((u) => u.user), ["alice"]);
    assert.equal(typeof (await a.ping()), "number");
    await assert.rejects(a.publish("not-joined-room", 1), (e) => e.code === "not_joined");
    await assert.rejects(a.join("bad room!"), (e) => e.code === "invalid_room");
    await assert.rejects(a.history("basics", { limit: 1000 }), (e) => e.code === "bad_request");
    t.diagnostic(`server ${s.ws}`);
    await cleanup();
  });

  test("guest login and presence events between two users", async () => {
    const s = await server({ store: "memory" });
    const ga = await s.guest("Alice");
    const gb = await s.guest("Bob");
    assert.ok(ga.token && ga.user && gb.user && ga.user !== gb.user);
    const a = client(s, { token: ga.token });
    const b = client(s, { token: gb.token });
    const ra = record(a, ["message", "user_joined", "user_left", "typing", "read"]);
    await a.join("hall");
    await b.join("hall");
    await waitFor(() => ra.user_joined.some((e) => e.user === gb.user), { what: "user_joined" });
    assert.equal(ra.user_joined.find((e) => e.user === gb.user).name, "Bob");
    b.typing("hall");
    await waitFor(() => ra.typing.length === 1, { what: "typing" });
    const ack = await b.publish("hall", { text: "hi" });
    b.read("hall", ack.seq);
    await waitFor(() => ra.read.length === 1, { what: "read" });
    assert.deepEqual({ from: ra.read[0].from, seq: ra.read[0].seq }, { from: gb.user, seq: 1 });
    await b.leave("hall");
    await waitFor(() => ra.user_left.some((e) => e.user === gb.user), { what: "user_left" });
    await cleanup();
  });
});

describe("resume across server restarts", () => {
  test("exactly once, in order, across a graceful restart and a crash (sqlite)", { timeout: 120000 }, async () => {
    const s = await server({ store: "sqlite" });
    const px = await proxy(s);
    // A goes through the proxy, so it stays offline while C publishes
    const a = client(s, { url: px.ws, token: s.token("alice") });
    const b = client(s, { token: s.token("bob") });
    const ra = record(a);
    // B is connected directly: it sees the server's own close (1001 on
    // SIGTERM, a dropped connection on SIGKILL) and comes back by itself
    const rb = record(b, ["message", "disconnect"]);
    await a.join("resume");
    await b.join("resume");
    const sent = [];
    for (let i = 1; i <= 10; i++) {
      sent.push(`m${i}`);
      await b.publish("resume", { text: `m${i}` });
    }
    await waitFor(() => ra.message.length === 10, { what: "first 10" });

    for (const [signal, from] of [
      ["SIGTERM", 11],
      ["SIGKILL", 21],
    ]) {
      px.pause(); // A cannot reconnect until we say so
      await s.restart(signal);
      await waitFor(() => a.status === "reconnecting", { what: "A reconnecting" });
      // a third client publishes while A is away
      const c = client(s, { token: s.token("carol") });
      await c.join("resume");
      for (let i = from; i < from + 5; i++) {
        sent.push(`m${i}`);
        await c.publish("resume", { text: `m${i}` });
      }
      px.resume();
      await waitFor(() => a.status === "open", { timeout: 20000, what: "A back" });
      // and live messages continue after the resume
      for (let i = from + 5; i < from + 10; i++) {
        sent.push(`m${i}`);
        await c.publish("resume", { text: `m${i}` });
      }
      await waitFor(() => ra.message.length === sent.length, { timeout: 20000, what: `${sent.length} messages` });
      c.close();
    }
    await waitFor(() => rb.message.length === sent.length, { timeout: 20000, what: "B has all" });
    await settle(a, b); // nothing else may arrive: a quiet spell, then a ping round trip as sentinel
    assertExactlyOnceInOrder(ra, "resume", sent);
    assertExactlyOnceInOrder(rb, "resume", sent);
    assert.equal(rb.disconnect[0].code, 1001, "SIGTERM closes with 1001");
    assert.deepEqual(seqs(ra, "resume"), range(1, 30));
    assert.equal(ra.epoch.length, 0, "sqlite keeps the epoch across restarts");
    const h = await a.history("resume", { limit: 100 });
    assert.deepEqual(h.messages.map((m) => m.body.text), sent, "acked messages survived the crash");
    await cleanup();
  });

  test("a new epoch after a memory-store restart: position reset, new messages delivered", async () => {
    const s = await server({ store: "memory" });
    const a = client(s, { token: s.token("alice") });
    const b = client(s, { token: s.token("bob") });
    const ra = record(a);
    const j1 = await a.join("ep");
    await b.join("ep");
    for (let i = 1; i <= 5; i++) await b.publish("ep", { text: `old${i}` });
    await waitFor(() => ra.message.length === 5);
    await s.restart("SIGKILL"); // history is gone, numbering restarts
    await waitFor(() => ra.epoch.length === 1, { timeout: 20000, what: "epoch event" });
    const e = ra.epoch[0];
    assert.equal(e.room, "ep");
    assert.equal(e.previous, j1.epoch);
    assert.notEqual(e.epoch, j1.epoch);
    assert.equal(e.previousSeq, 5);
    assert.equal(a.lastSeq("ep"), e.seq);
    // B is back too (its own rejoin); new messages start again at 1
    await waitFor(() => b.status === "open" && b.epoch("ep") === e.epoch, { timeout: 20000, what: "B back" });
    for (let i = 1; i <= 3; i++) await b.publish("ep", { text: `new${i}` });
    await waitFor(() => ra.message.length === 8, { what: "new messages" });
    assert.deepEqual(texts(ra, "ep"), ["old1", "old2", "old3", "old4", "old5", "new1", "new2", "new3"]);
    assert.deepEqual(seqs(ra, "ep").slice(5), [e.seq + 1, e.seq + 2, e.seq + 3]);
    await cleanup();
  });
});

describe("offline queue", () => {
  test("publishes made while the server is down are sent exactly once after reconnect", { timeout: 60000 }, async () => {
    const s = await server({ store: "sqlite" });
    const a = client(s, { token: s.token("alice") });
    const ra = record(a);
    await a.join("queue");
    await a.publish("queue", { text: "before" });
    await s.stop("SIGTERM");
    await waitFor(() => a.status === "reconnecting", { what: "offline" });
    const ps = [1, 2, 3].map((i) => a.publish("queue", { text: `offline${i}` }));
    const d = a.dm("bob", { text: "offline dm" });
    assert.deepEqual(a.pending.map((r) => r.state), ["queued", "queued", "queued", "queued"]);
    await sleep(300);
    await s.start();
    const acks = await Promise.all(ps);
    assert.deepEqual(acks.map((x) => x.seq), [2, 3, 4]);
    const dack = await d;
    assert.equal(dack.room, dmRoom("alice", "bob"));
    assert.equal(a.pending.length, 0);
    // an observer that joins from the start sees each exactly once
    const o = client(s, { token: s.token("observer") });
    const ro = record(o);
    await o.join("queue", { since: 0 });
    await waitFor(() => ro.message.length === 4, { what: "replay" });
    await settle(o, a); // nothing else may arrive: a quiet spell, then a ping round trip as sentinel
    assert.deepEqual(texts(ro, "queue"), ["before", "offline1", "offline2", "offline3"]);
    assert.deepEqual(texts(ra, "queue"), ["before", "offline1", "offline2", "offline3"]);
    const bob = client(s, { token: s.token("bob") });
    const dh = await bob.history(dmRoom("alice", "bob"));
    assert.deepEqual(dh.messages.map((m) => m.body.text), ["offline dm"]);
    await cleanup();
  });

  test("a publish whose ack is lost is not resent, and is confirmed from the replay", { timeout: 60000 }, async () => {
    const s = await server({ store: "memory" });
    const px = await proxy(s);
    const a = client(s, { url: px.ws, token: s.token("alice") });
    const b = client(s, { token: s.token("bob") });
    const rb = record(b);
    await a.join("inflight");
    await b.join("inflight");
    await a.publish("inflight", { text: "first" });

    // 1. the publish reaches the server, its ack does not reach us
    px.blackhole("down");
    const p = a.publish("inflight", { text: "ack lost", cid: "x1" });
    await waitFor(() => rb.message.length === 2, { what: "stored" });
    assert.equal(p.record.state, "sent");
    px.cut();
    px.resume();
    const ack = await p;
    assert.equal(ack.recovered, true);
    assert.equal(ack.seq, 2);

    // 2. the publish never reaches the server
    px.blackhole("up");
    const q = a.publish("inflight", { text: "never arrived", cid: "x2" });
    await sleep(200);
    px.cut();
    px.resume();
    await assert.rejects(q, (e) => e.code === "unconfirmed");
    assert.equal(a.pending.length, 1);
    assert.equal(a.pending[0].state, "unknown");

    await a.publish("inflight", { text: "after" });
    await waitFor(() => rb.message.length === 3, { what: "after" });
    await settle(b); // nothing else may arrive: a quiet spell, then a ping round trip as sentinel
    assert.deepEqual(texts(rb, "inflight"), ["first", "ack lost", "after"], "nothing was sent twice");
    await cleanup();
  });
});

describe("dm and tokens", () => {
  test("dms sent while a client is away are caught up exactly once, in order", { timeout: 60000 }, async () => {
    const s = await server({ store: "memory" });
    const px = await proxy(s);
    const a = client(s, { url: px.ws, token: s.token("alice") });
    const b = client(s, { token: s.token("bob") });
    const ra = record(a);
    await a.connect();
    await b.connect();
    const room = dmRoom("alice", "bob");
    await b.dm("alice", { text: "d1" });
    await waitFor(() => ra.message.length === 1, { what: "live dm" });
    px.pause();
    await waitFor(() => a.status === "reconnecting");
    for (let i = 2; i <= 4; i++) await b.dm("alice", { text: `d${i}` });
    await b.dm("carol", { text: "not for alice" });
    px.resume();
    await waitFor(() => ra.message.length === 4, { timeout: 20000, what: "caught up" });
    await b.dm("alice", { text: "d5" });
    await waitFor(() => ra.message.length === 5, { what: "live again" });
    await settle(a); // nothing else may arrive: a quiet spell, then a ping round trip as sentinel
    assertExactlyOnceInOrder(ra, room, ["d1", "d2", "d3", "d4", "d5"]);
    await cleanup();
  });

  test("close 1008 token expired: getToken is called and the client resumes", { timeout: 60000 }, async () => {
    const s = await server({ store: "memory" });
    let calls = 0;
    const getToken = async () => {
      calls++;
      return s.token("alice", { exp: Math.floor(Date.now() / 1000) + 2 });
    };
    const a = client(s, { getToken });
    const b = client(s, { token: s.token("bob") });
    const ra = record(a, ["message", "disconnect"]);
    await a.join("exp");
    await b.join("exp");
    await b.publish("exp", { text: "e1" });
    await waitFor(() => ra.disconnect.some((d) => d.code === 1008), { timeout: 15000, what: "token expired close" });
    assert.match(ra.disconnect.find((d) => d.code === 1008).reason, /token expired/);
    await b.publish("exp", { text: "e2" });
    await waitFor(() => ra.message.length === 2, { timeout: 15000, what: "resumed" });
    assert.ok(calls >= 2, `getToken called ${calls} times`);
    assertExactlyOnceInOrder(ra, "exp", ["e1", "e2"]);
    await cleanup();
  });
});
