// The bundled corechat web client. No framework; every piece of user data
// goes into the page through textContent / text nodes, never as HTML.
import { CoreChat, dmRoom, dmPeer } from "/corechat.js";

const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const USER_RE = /^[A-Za-z0-9_.@-]{1,64}$/;
const GROUP_MS = 5 * 60 * 1000;
const TYPING_SHOW_MS = 5000;
const TYPING_SEND_MS = 2500;
const PAGE = 50;
const TOKEN_KEY = "corechat.token";

const $ = (id) => document.getElementById(id);

/** Create an element; text is set with textContent. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const state = {
  chat: null,
  me: null, // user id
  myName: "",
  current: null, // room shown
  rooms: new Map(), // room -> view state
  names: new Map(), // user id -> display name
  echoes: new Map(), // client id -> local echo of a message being sent
  lastTypingSent: 0,
  readTimer: null,
  confirmedPeers: new Set(), // user ids never seen that the user chose to message anyway
  suggest: { items: [], active: -1 },
};

// ---------------------------------------------------------------- helpers

function nameOf(user) {
  if (user === state.me) return state.myName || user;
  return state.names.get(user) || user;
}

function hue(s) {
  let x = 0;
  for (let i = 0; i < s.length; i++) x = (x * 31 + s.charCodeAt(i)) >>> 0;
  return x % 360;
}

function initials(name) {
  const parts = String(name).trim().split(/\s+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0][0] + parts[1][0] : String(name).slice(0, 2);
  return s.toUpperCase() || "?";
}

function avatar(user, name, size = "") {
  const el = h("span", { class: `avatar ${size}`, "aria-hidden": "true", text: initials(name || user) });
  el.style.setProperty("--h", hue(user || "?"));
  return el;
}

function bodyText(body) {
  if (typeof body === "string") return { text: body, raw: false };
  if (body && typeof body === "object" && typeof body.text === "string") return { text: body.text, raw: false };
  let s;
  try {
    s = JSON.stringify(body);
  } catch {
    s = String(body);
  }
  return { text: s, raw: true };
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
/** The time without AM/PM, for the narrow gutter of grouped messages. */
function shortTime(ts) {
  return timeFmt
    .formatToParts(ts)
    .filter((p) => p.type !== "dayPeriod")
    .map((p) => p.value)
    .join("")
    .trim();
}
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
function dayLabel(ts) {
  const d = new Date(ts);
  const today = new Date();
  const y = new Date();
  y.setDate(today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === y.toDateString()) return "Yesterday";
  return dayFmt.format(d);
}

function roomLabel(room) {
  const peer = dmPeer(room, state.me);
  return peer != null ? nameOf(peer) : room;
}

function randomId() {
  const a = new Uint8Array(8);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function view(room) {
  let v = state.rooms.get(room);
  if (!v) {
    v = {
      room,
      dm: room.startsWith("dm:"),
      peer: dmPeer(room, state.me),
      msgs: new Map(), // seq -> message
      oldest: null, // smallest seq loaded
      hasMore: true,
      loadedLatest: false,
      loading: false,
      joined: false,
      joining: null,
      latest: 0, // largest seq known
      myRead: 0, // for unread counts
      sentRead: 0, // the read marker the server has
      reads: new Map(), // user -> seq (others' read markers)
      members: new Map(), // user -> name
      typing: new Map(), // user -> until
    };
    state.rooms.set(room, v);
  }
  return v;
}

function unread(v) {
  return Math.max(0, v.latest - v.myRead);
}

function savedRooms() {
  try {
    const all = JSON.parse(localStorage.getItem(`corechat.rooms.${state.me}`) || "[]");
    return Array.isArray(all) ? all.filter((r) => typeof r === "string" && ROOM_RE.test(r)) : [];
  } catch {
    return [];
  }
}

function saveRooms() {
  const list = [...state.rooms.values()].filter((v) => !v.dm && v.joined).map((v) => v.room);
  try {
    localStorage.setItem(`corechat.rooms.${state.me}`, JSON.stringify(list));
  } catch {}
}

// ---------------------------------------------------------------- login

function showLogin(message = "") {
  $("app").hidden = true;
  $("auth-failed").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("guest-name").focus();
}

/** The server refuses the token: say why, and offer the way back to the login form. */
function showAuthFailed(reason) {
  $("app").hidden = true;
  $("login").hidden = true;
  $("auth-failed").hidden = false;
  $("auth-failed-text").textContent = `Your sign-in is not valid: ${reason || "the server refused it"}.`;
  $("auth-failed-back").focus();
}

$("auth-failed-back").addEventListener("click", () => {
  if (state.chat) state.chat.close();
  localStorage.removeItem(TOKEN_KEY);
  location.reload();
});

$("guest-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("guest-name").value.trim();
  if (!name) return;
  const btn = e.submitter || $("guest-form").querySelector("button");
  btn.disabled = true;
  $("login-error").textContent = "";
  try {
    const res = await fetch("/api/guest", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name }),
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok || !data.token) throw new Error(data.error || `guest login failed (${res.status})`);
    localStorage.setItem(TOKEN_KEY, data.token);
    start(data.token);
  } catch (err) {
    $("login-error").textContent = err.message || String(err);
  } finally {
    btn.disabled = false;
  }
});

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  localStorage.setItem(TOKEN_KEY, token);
  start(token);
});

$("sign-out").addEventListener("click", () => {
  if (state.chat) state.chat.close();
  localStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ---------------------------------------------------------------- connection

function start(token) {
  $("login").hidden = true;
  $("app").hidden = false;
  const chat = new CoreChat({ token, reads: true });
  state.chat = chat;
  window.corechat = chat; // handy for debugging and tests
  let welcomed = false;
  let failedBeforeWelcome = 0;

  chat.on("status", renderStatus);
  chat.on("disconnect", () => {
    if (!welcomed && ++failedBeforeWelcome >= 3 && chat.status !== "closed") {
      // most likely the token is not accepted (a browser cannot see the 401)
      $("banner").hidden = false;
      $("banner").className = "banner warn";
      $("banner").replaceChildren(
        "Can't connect. The server may be down, or your sign-in is no longer valid. ",
        h("button", { class: "link", type: "button", text: "Sign in again", onclick: () => $("sign-out").click() }),
      );
    }
  });
  chat.on("welcome", (w) => {
    const first = !welcomed;
    welcomed = true;
    state.me = w.user;
    state.myName = w.name || w.user;
    $("me-name").textContent = state.myName;
    $("me-id").textContent = `@${w.user}`;
    $("me-avatar").replaceWith(Object.assign(avatar(w.user, state.myName, "sm"), { id: "me-avatar" }));
    if (first) onFirstWelcome();
    else refreshRooms();
  });
  chat.on("message", onMessage);
  chat.on("joined", (j) => {
    const v = view(j.room);
    v.joined = true;
    v.latest = Math.max(v.latest, j.seq);
    v.myRead = Math.max(v.myRead, j.read || 0);
    v.sentRead = Math.max(v.sentRead, j.read || 0);
    // other members' markers (the `reads` extension): receipts survive a reload
    for (const [user, seq] of Object.entries(j.reads || {})) {
      if (user !== state.me) v.reads.set(user, Math.max(v.reads.get(user) || 0, seq));
    }
    if (state.current === j.room) renderReceipts();
    renderRoomList();
    // presence may have changed while we were away
    loadPresence(v);
  });
  chat.on("epoch", (e) => {
    // the room's history was lost and numbering restarted: reload it
    const v = view(e.room);
    v.msgs.clear();
    v.oldest = null;
    v.hasMore = true;
    v.loadedLatest = false;
    v.latest = e.seq;
    v.myRead = Math.min(v.myRead, e.seq);
    v.reads.clear();
    if (state.current === e.room) openRoom(e.room);
    renderRoomList();
  });
  chat.on("user_joined", (e) => {
    state.names.set(e.user, e.name || e.user);
    const v = view(e.room);
    v.members.set(e.user, e.name || e.user);
    if (state.current === e.room) renderMembers();
  });
  chat.on("user_left", (e) => {
    const v = view(e.room);
    v.members.delete(e.user);
    v.typing.delete(e.user);
    if (state.current === e.room) {
      renderMembers();
      renderTyping();
    }
  });
  chat.on("typing", (e) => {
    if (e.from === state.me) return;
    const v = view(e.room);
    v.typing.set(e.from, Date.now() + TYPING_SHOW_MS);
    if (state.current === e.room) renderTyping();
  });
  chat.on("read", (e) => {
    if (e.from === state.me) {
      const v = view(e.room);
      v.myRead = Math.max(v.myRead, e.seq);
      renderRoomList();
      return;
    }
    const v = view(e.room);
    v.reads.set(e.from, Math.max(v.reads.get(e.from) || 0, e.seq));
    if (state.current === e.room) renderReceipts();
  });
  chat.on("pending", onPending);
  // the token is refused (checked with /api/me after a failed upgrade): the
  // library has stopped reconnecting
  chat.on("auth_failed", (e) => showAuthFailed(e && e.reason));
  chat.on("error", (err) => {
    if (err && err.code === "token_expired") showAuthFailed("token expired");
  });
  setInterval(() => {
    if (state.current) renderTyping();
  }, 1000);
}

async function onFirstWelcome() {
  const saved = savedRooms();
  let listed = [];
  try {
    listed = await state.chat.rooms();
  } catch {}
  for (const it of listed) {
    const v = view(it.room);
    v.latest = Math.max(v.latest, it.seq || 0);
    v.myRead = Math.max(v.myRead, it.read || 0);
  }
  const toJoin = new Set(saved);
  for (const it of listed) if (!it.room.startsWith("dm:")) toJoin.add(it.room);
  for (const room of toJoin) ensureJoined(view(room)).catch(() => {});
  renderRoomList();
  const hash = decodeURIComponent(location.hash.slice(1));
  let opened = false;
  if (hash && (ROOM_RE.test(hash) || hash.startsWith("@"))) {
    try {
      opened = openTarget(hash);
    } catch {}
  }
  if (opened) return;
  if (saved.length) openRoom(saved[0]);
  else renderEmpty();
}

async function refreshRooms() {
  try {
    const listed = await state.chat.rooms();
    for (const it of listed) {
      const v = view(it.room);
      v.latest = Math.max(v.latest, it.seq || 0);
      v.myRead = Math.max(v.myRead, it.read || 0);
    }
    renderRoomList();
  } catch {}
}

function ensureJoined(v) {
  if (v.joined) return Promise.resolve();
  if (!v.joining) {
    v.joining = state.chat
      .join(v.room)
      .then((j) => {
        v.joined = true;
        v.myRead = Math.max(v.myRead, j.read || 0);
        v.latest = Math.max(v.latest, j.seq || 0);
        saveRooms();
        renderRoomList();
        return j;
      })
      .finally(() => {
        v.joining = null;
      });
  }
  return v.joining;
}

async function loadPresence(v) {
  try {
    const users = await state.chat.presence(v.room);
    v.members = new Map(users.map((u) => [u.user, u.name || u.user]));
    for (const u of users) if (u.name) state.names.set(u.user, u.name);
    if (state.current === v.room) {
      renderMembers();
      renderHeader();
      renderReceipts(); // receipts from `joined.reads` now have their names
    }
    if (v.dm) renderRoomList();
  } catch {}
}

function renderStatus(status) {
  const el = $("conn");
  el.dataset.status = status;
  const text = { connecting: "Connecting…", open: "Online", reconnecting: "Reconnecting…", closed: "Offline" }[status] || status;
  $("conn-text").textContent = text;
  const banner = $("banner");
  if (status === "reconnecting") {
    banner.hidden = false;
    banner.className = "banner warn";
    banner.replaceChildren(
      h("span", { class: "spinner", "aria-hidden": "true" }),
      "Connection lost. Reconnecting… Messages you send now are delivered when you are back.",
    );
  } else if (status === "closed") {
    banner.hidden = false;
    banner.className = "banner";
    banner.textContent = "Disconnected.";
  } else {
    banner.hidden = true;
  }
  document.body.dataset.conn = status;
  if (status !== "open") {
    // whoever was typing may have stopped while we could not hear
    for (const v of state.rooms.values()) v.typing.clear();
    renderTyping();
  }
}

// ---------------------------------------------------------------- messages

function onMessage(m) {
  if (m.name) state.names.set(m.from, m.name);
  const v = view(m.room);
  const isNewDm = v.dm && !v.seen;
  v.seen = true;
  v.msgs.set(m.seq, m);
  v.latest = Math.max(v.latest, m.seq);
  if (v.oldest == null) v.oldest = m.seq;
  if (m.from === state.me) v.myRead = Math.max(v.myRead, m.seq);
  v.typing.delete(m.from);
  const cid = m.body && typeof m.body === "object" ? m.body.cid : null;
  if (cid && state.echoes.has(cid)) state.echoes.delete(cid);
  if (state.current === m.room) {
    appendMessage(v, m);
    renderTyping();
    scheduleRead();
  }
  if (isNewDm || state.current !== m.room) renderRoomList();
  else updateTitle();
}

function onPending(rec) {
  const e = state.echoes.get(rec.id);
  if (!e) return;
  e.state = rec.state;
  e.error = rec.error;
  if (rec.state === "acked") {
    const v = view(rec.ack.room);
    if (v.msgs.has(rec.ack.seq)) state.echoes.delete(rec.id);
  }
  if (state.current === e.room) renderMessages();
}

/** Sends `text` to the current room; false when it was not sent (yet). */
function send(text) {
  const room = state.current;
  if (!room || !text.trim()) return false;
  const v = view(room);
  if (v.dm && !isKnownPeer(v.peer)) {
    askDmConfirm(v, text);
    return false;
  }
  const cid = `c${randomId()}`;
  const body = { text, cid };
  const p = v.dm ? state.chat.dm(v.peer, body, { id: cid }) : state.chat.publish(room, body, { id: cid });
  state.echoes.set(cid, { id: cid, room, text, ts: Date.now(), state: p.record.state, record: p.record });
  p.catch(() => {});
  renderMessages({ toBottom: true });
  return true;
}

async function loadLatest(v) {
  if (v.loading) return;
  v.loading = true;
  renderHistoryStatus(v);
  try {
    const h = await state.chat.history(v.room, { limit: PAGE });
    for (const m of h.messages) {
      v.msgs.set(m.seq, m);
      if (m.name) state.names.set(m.from, m.name);
    }
    v.hasMore = h.has_more;
    v.loadedLatest = true;
    if (h.messages.length) {
      v.oldest = Math.min(v.oldest ?? Infinity, h.messages[0].seq);
      v.latest = Math.max(v.latest, h.messages[h.messages.length - 1].seq);
    } else if (!v.msgs.size) {
      v.hasMore = false;
    }
  } catch (err) {
    v.historyError = err.code || err.message;
  } finally {
    v.loading = false;
  }
  if (state.current === v.room) {
    renderMessages({ toBottom: true });
    scheduleRead();
  }
}

async function loadOlder(v) {
  if (v.loading || !v.hasMore || v.oldest == null) return;
  v.loading = true;
  renderHistoryStatus(v);
  const box = $("messages");
  try {
    const h = await state.chat.history(v.room, { before: v.oldest, limit: PAGE });
    const before = box.scrollHeight;
    const top = box.scrollTop;
    for (const m of h.messages) {
      v.msgs.set(m.seq, m);
      if (m.name) state.names.set(m.from, m.name);
    }
    if (h.messages.length) v.oldest = Math.min(v.oldest, h.messages[0].seq);
    v.hasMore = h.has_more && h.messages.length > 0;
    v.loading = false;
    if (state.current === v.room) {
      renderMessages();
      box.scrollTop = top + (box.scrollHeight - before);
    }
  } catch (err) {
    v.historyError = err.code || err.message;
  } finally {
    v.loading = false;
    if (state.current === v.room) renderHistoryStatus(v);
  }
}

$("messages").addEventListener("scroll", () => {
  const v = state.current && state.rooms.get(state.current);
  if (!v) return;
  const box = $("messages");
  if (box.scrollTop < 150) loadOlder(v);
  if (nearBottom()) {
    $("jump").hidden = true;
    scheduleRead();
  }
});

$("jump").addEventListener("click", () => {
  scrollToBottom();
  $("jump").hidden = true;
});

function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function scheduleRead() {
  clearTimeout(state.readTimer);
  state.readTimer = setTimeout(markRead, 250);
}

function markRead() {
  const v = state.current && state.rooms.get(state.current);
  if (!v || !v.joined || document.visibilityState !== "visible" || !nearBottom()) return;
  let top = 0;
  for (const s of v.msgs.keys()) top = Math.max(top, s);
  if (top > v.sentRead) {
    // the marker the server holds; own messages count as read locally
    // (v.myRead) but still have to be sent
    v.sentRead = top;
    v.myRead = Math.max(v.myRead, top);
    state.chat.read(v.room, top);
    renderRoomList();
  }
}
document.addEventListener("visibilitychange", scheduleRead);

// ---------------------------------------------------------------- rendering

function sortedMsgs(v) {
  return [...v.msgs.values()].sort((a, b) => a.seq - b.seq);
}

function messageEl(m, prev) {
  const mine = m.from === state.me;
  const grouped =
    prev &&
    prev.from === m.from &&
    m.ts - prev.ts < GROUP_MS &&
    new Date(prev.ts).toDateString() === new Date(m.ts).toDateString();
  const { text, raw } = bodyText(m.body);
  const time = h("time", {
    datetime: new Date(m.ts).toISOString(),
    title: new Date(m.ts).toLocaleString(),
    text: grouped ? shortTime(m.ts) : timeFmt.format(m.ts),
  });
  const li = h(
    "li",
    { class: `msg${grouped ? " grouped" : ""}${mine ? " mine" : ""}`, dataset: { seq: m.seq, from: m.from } },
    grouped ? h("span", { class: "gutter" }, time) : avatar(m.from, m.name || nameOf(m.from)),
    h(
      "div",
      { class: "msg-main" },
      grouped ? null : h("div", { class: "msg-head" }, h("span", { class: "msg-name", text: m.name || nameOf(m.from) }), time),
      h("div", { class: `msg-body${raw ? " raw" : ""}`, text }),
    ),
  );
  return li;
}

function dayEl(ts) {
  return h("li", { class: "day", dataset: { day: new Date(ts).toDateString() } }, h("span", { text: dayLabel(ts) }));
}

function echoEl(e, prev) {
  const grouped = prev && prev.from === state.me && e.ts - prev.ts < GROUP_MS;
  const status = {
    queued: "Waiting for connection…",
    sent: "Sending…",
    acked: "Sent",
    unknown: "Not confirmed: the connection dropped before the server answered.",
    failed: `Not sent${e.error && e.error.code ? ` (${e.error.code})` : ""}.`,
  }[e.state];
  const actions = [];
  if (e.state === "unknown" || e.state === "failed") {
    actions.push(
      h("button", {
        class: "link",
        type: "button",
        text: "Retry",
        onclick: () => {
          state.echoes.delete(e.id);
          state.chat.discard(e.record);
          send(e.text);
        },
      }),
      h("button", {
        class: "link",
        type: "button",
        text: "Dismiss",
        onclick: () => {
          state.echoes.delete(e.id);
          state.chat.discard(e.record);
          renderMessages();
        },
      }),
    );
  }
  return h(
    "li",
    { class: `msg mine echo ${e.state}${grouped ? " grouped" : ""}`, dataset: { cid: e.id } },
    grouped ? h("span", { class: "gutter" }) : avatar(state.me, state.myName),
    h(
      "div",
      { class: "msg-main" },
      grouped ? null : h("div", { class: "msg-head" }, h("span", { class: "msg-name", text: state.myName })),
      h("div", { class: "msg-body", text: e.text }),
      h("div", { class: "msg-status" }, h("span", { text: status }), ...actions),
    ),
  );
}

function renderMessages({ toBottom = false } = {}) {
  const v = state.current && state.rooms.get(state.current);
  const list = $("message-list");
  if (!v) {
    list.replaceChildren();
    return;
  }
  const wasBottom = nearBottom();
  const box = $("messages");
  const top = box.scrollTop;
  const items = [];
  let prev = null;
  let day = null;
  for (const m of sortedMsgs(v)) {
    const d = new Date(m.ts).toDateString();
    if (d !== day) {
      items.push(dayEl(m.ts));
      day = d;
      prev = null;
    }
    items.push(messageEl(m, prev));
    prev = m;
  }
  for (const e of state.echoes.values()) {
    if (e.room !== v.room) continue;
    items.push(echoEl(e, prev));
    prev = { from: state.me, ts: e.ts };
  }
  list.replaceChildren(...items);
  $("empty").hidden = true;
  renderHistoryStatus(v);
  renderReceipts();
  if (toBottom || wasBottom) scrollToBottom();
  else box.scrollTop = top;
}

function appendMessage(v, m) {
  const list = $("message-list");
  if (list.querySelector(`li.msg[data-seq="${m.seq}"]`)) return;
  const rendered = list.querySelectorAll("li.msg:not(.echo)");
  const lastEl = rendered[rendered.length - 1];
  const lastSeq = lastEl ? Number(lastEl.dataset.seq) : -1;
  if (list.querySelector("li.echo") || m.seq < lastSeq) {
    // out of order with what is shown, or local echoes to keep last: redraw
    renderMessages();
    return;
  }
  const wasBottom = nearBottom();
  const prev = lastEl ? v.msgs.get(lastSeq) : null;
  const days = list.querySelectorAll("li.day");
  const lastDay = days[days.length - 1];
  const d = new Date(m.ts).toDateString();
  const sameDay = lastDay && lastDay.dataset.day === d;
  if (!sameDay) list.append(dayEl(m.ts));
  list.append(messageEl(m, sameDay ? prev : null));
  $("empty").hidden = true;
  renderReceipts();
  if (wasBottom || m.from === state.me) scrollToBottom();
  else $("jump").hidden = false;
}

function renderHistoryStatus(v) {
  const el = $("history-status");
  if (v.loading) el.textContent = "Loading…";
  else if (v.historyError) el.textContent = `Could not load history (${v.historyError}).`;
  else if (!v.hasMore && v.loadedLatest) {
    el.replaceChildren(
      h("div", { class: "room-start" },
        h("div", { class: "room-start-icon", text: v.dm ? initials(roomLabel(v.room)) : "#" }),
        h("div", { class: "room-start-title", text: v.dm ? roomLabel(v.room) : v.room }),
        h("div", { class: "muted small", text: v.dm ? "This is the beginning of your conversation." : "This is the very beginning of the room." }),
      ),
    );
  } else el.textContent = "";
}

function renderReceipts() {
  const v = state.current && state.rooms.get(state.current);
  const list = $("message-list");
  for (const el of list.querySelectorAll(".msg-seen")) el.remove();
  if (!v || !v.reads.size) return;
  const els = [...list.querySelectorAll("li.msg:not(.echo)")];
  const bySeq = new Map();
  for (const [user, seq] of v.reads) {
    // one's own marker is never "seen by" oneself
    if (user === state.me) continue;
    // the newest rendered message at or below the reader's marker that the
    // reader did not write: "Seen by Bob" under Bob's own message says nothing
    let target = null;
    for (const el of els) if (Number(el.dataset.seq) <= seq && el.dataset.from !== user) target = el;
    if (!target) continue;
    if (!bySeq.has(target)) bySeq.set(target, []);
    bySeq.get(target).push(nameOf(user));
  }
  for (const [el, names] of bySeq) {
    names.sort();
    const text = names.length > 3 ? `Seen by ${names.slice(0, 3).join(", ")} and ${names.length - 3} more` : `Seen by ${names.join(", ")}`;
    el.querySelector(".msg-main").append(h("div", { class: "msg-seen", title: names.join(", "), text }));
  }
}

function renderTyping() {
  const v = state.current && state.rooms.get(state.current);
  const el = $("typing");
  if (!v) {
    el.textContent = "";
    return;
  }
  const now = Date.now();
  const who = [];
  for (const [user, until] of v.typing) {
    if (until < now) v.typing.delete(user);
    else who.push(nameOf(user));
  }
  if (!who.length) {
    el.replaceChildren();
    el.classList.remove("on");
    return;
  }
  const text =
    who.length === 1 ? `${who[0]} is typing` : who.length === 2 ? `${who[0]} and ${who[1]} are typing` : "Several people are typing";
  el.classList.add("on");
  el.replaceChildren(h("span", { class: "dots", "aria-hidden": "true" }, h("i"), h("i"), h("i")), h("span", { text }));
}

function renderMembers() {
  const v = state.current && state.rooms.get(state.current);
  const list = $("member-list");
  if (!v) {
    list.replaceChildren();
    return;
  }
  $("member-count").textContent = v.members.size ? String(v.members.size) : "";
  const users = [...v.members].sort((a, b) => (a[0] === state.me ? -1 : b[0] === state.me ? 1 : a[1].localeCompare(b[1])));
  list.replaceChildren(
    ...users.map(([user, name]) =>
      h(
        "li",
        {},
        h(
          "button",
          {
            class: "member",
            type: "button",
            title: user === state.me ? "You" : `Message ${name}`,
            disabled: user === state.me,
            dataset: { user },
            onclick: () => openRoom(dmRoom(state.me, user)),
          },
          h("span", { class: "presence-wrap" }, avatar(user, name, "sm"), h("span", { class: "online-dot" })),
          h("span", { class: "member-name", text: name }),
          user === state.me ? h("span", { class: "you", text: "you" }) : null,
        ),
      ),
    ),
  );
  renderHeader();
}

function renderHeader() {
  const v = state.current && state.rooms.get(state.current);
  if (!v) {
    $("room-title").textContent = "corechat";
    $("room-sub").textContent = "";
    return;
  }
  $("room-title").replaceChildren(v.dm ? "" : h("span", { class: "hash", text: "#" }), roomLabel(v.room));
  let sub;
  if (v.dm) {
    const online = v.members.has(v.peer);
    sub = online ? "Online" : `@${v.peer}`;
  } else {
    const n = v.members.size;
    sub = n ? `${n} online` : "";
  }
  $("room-sub").textContent = sub;
  $("input").placeholder = v.dm ? `Message ${roomLabel(v.room)}` : `Message #${v.room}`;
}

function renderRoomList() {
  const rooms = [...state.rooms.values()].filter((v) => (v.dm ? v.msgs.size || v.latest || v.joined || state.current === v.room : v.joined || v.joining || state.current === v.room));
  const item = (v) => {
    const n = state.current === v.room ? 0 : unread(v);
    return h(
      "li",
      {},
      h(
        "a",
        {
          class: `room${state.current === v.room ? " active" : ""}${n ? " has-unread" : ""}`,
          href: `#${v.dm ? `@${v.peer}` : v.room}`,
          dataset: { room: v.room },
          onclick: (e) => {
            e.preventDefault();
            openRoom(v.room);
          },
        },
        v.dm ? avatar(v.peer, roomLabel(v.room), "xs") : h("span", { class: "hash", "aria-hidden": "true", text: "#" }),
        h("span", { class: "room-name", text: roomLabel(v.room) }),
        n ? h("span", { class: "badge", "aria-label": `${n} unread`, text: n > 99 ? "99+" : String(n) }) : null,
      ),
    );
  };
  const normal = rooms.filter((v) => !v.dm).sort((a, b) => a.room.localeCompare(b.room));
  const dms = rooms.filter((v) => v.dm).sort((a, b) => roomLabel(a.room).localeCompare(roomLabel(b.room)));
  $("room-list").replaceChildren(...normal.map(item));
  $("rooms-empty").hidden = normal.length > 0;
  $("dm-list").replaceChildren(...dms.map(item));
  $("dm-empty").hidden = dms.length > 0;
  updateTitle();
}

function updateTitle() {
  let total = 0;
  for (const v of state.rooms.values()) if (v.room !== state.current && (v.joined || v.dm)) total += unread(v);
  const label = state.current ? (state.rooms.get(state.current).dm ? roomLabel(state.current) : `#${state.current}`) : "corechat";
  document.title = `${total ? `(${total}) ` : ""}${label} · corechat`;
  $("menu-badge").hidden = !total;
  $("menu-badge").textContent = total > 99 ? "99+" : String(total);
}

function renderEmpty() {
  document.body.classList.add("no-room");
  $("empty").hidden = false;
  $("composer").hidden = true;
  $("message-list").replaceChildren();
  $("history-status").replaceChildren();
  $("typing").replaceChildren();
  renderHeader();
  renderMembers();
  $("suggestions").replaceChildren(
    ...["general", "random", "help"].map((r) =>
      h("button", { class: "chip", type: "button", onclick: () => openRoom(r) }, h("span", { class: "hash", text: "#" }), r),
    ),
  );
}

// ---------------------------------------------------------------- navigation

/**
 * Opens a room, or with `@...` a conversation. `@` takes a user id, or the
 * display name of exactly one user this page knows. With `confirm`, an id
 * never seen asks first (the join form); otherwise (a link, the address
 * bar) the conversation opens and sending to it asks.
 */
function openTarget(text, { confirm = false } = {}) {
  text = text.trim();
  if (text.startsWith("@")) {
    const q = text.slice(1).trim();
    const known = knownUsers();
    let user = q;
    if (!known.has(q)) {
      const byName = [...known].filter(([, name]) => name.toLowerCase() === q.toLowerCase());
      if (byName.length === 1) user = byName[0][0];
      else if (byName.length > 1) throw new Error(`Several people are called “${q}”: pick one from the list.`);
    }
    if (user === state.me) throw new Error("That is you.");
    if (!USER_RE.test(user)) {
      throw new Error(`No one called “${q}” is known here, and it is not a user id (1 to 64 letters, digits or _ . @ -).`);
    }
    if (confirm && !isKnownPeer(user)) {
      showJoinConfirm(user);
      return false;
    }
    openRoom(dmRoom(state.me, user));
    return true;
  }
  const room = text.replace(/^#/, "");
  if (!ROOM_RE.test(room)) throw new Error("Room names start with a letter or digit and use letters, digits and _ . : -");
  if (room.startsWith("dm:") && dmPeer(room, state.me) == null) throw new Error("Not a conversation of yours.");
  openRoom(room);
  return true;
}

function openRoom(room) {
  // what was on screen in the room we leave has been seen
  if (state.current && state.current !== room) markRead();
  const v = view(room);
  state.current = room;
  $("dm-confirm").hidden = true;
  document.body.classList.remove("no-room");
  const hash = v.dm ? `@${v.peer}` : room;
  if (decodeURIComponent(location.hash.slice(1)) !== hash) history.replaceState(null, "", `#${encodeURIComponent(hash)}`);
  $("empty").hidden = true;
  $("composer").hidden = false;
  $("jump").hidden = true;
  v.historyError = null;
  renderHeader();
  renderMembers();
  renderTyping();
  renderRoomList();
  renderMessages({ toBottom: true });
  closeDrawers();
  if (!matchMedia("(max-width: 720px)").matches) $("input").focus();
  ensureJoined(v)
    .then(() => {
      loadPresence(v);
      scheduleRead();
    })
    .catch((err) => {
      if (state.current !== room) return;
      v.historyError = err.code || err.message;
      renderHistoryStatus(v);
    });
  if (!v.loadedLatest) loadLatest(v);
}

$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("join-input");
  $("join-error").textContent = "";
  if (!input.value.trim()) return;
  const { items, active } = state.suggest;
  if (!$("join-suggest").hidden && items[active]) {
    pickUser(items[active].id);
    return;
  }
  hideSuggest();
  try {
    if (openTarget(input.value, { confirm: true })) input.value = "";
  } catch (err) {
    $("join-error").textContent = err.message;
  }
});

// ---------------------------------------------------------------- people

/** Users this page knows (presence and members of its rooms, senders, dm partners): id -> name. */
function knownUsers() {
  const users = new Map(state.names);
  for (const v of state.rooms.values()) {
    for (const [id, name] of v.members) users.set(id, name || users.get(id) || id);
    // a conversation that has messages: its partner is real
    if (v.dm && v.peer && (v.msgs.size || v.latest) && !users.has(v.peer)) users.set(v.peer, v.peer);
  }
  if (state.me) users.delete(state.me);
  return users;
}

function isKnownPeer(id) {
  return knownUsers().has(id) || state.confirmedPeers.has(id);
}

/** Known users matching what follows `@`, best first: by id, name, word of the name. */
function userMatches(q) {
  const ql = q.toLowerCase();
  const out = [];
  for (const [id, rawName] of knownUsers()) {
    const name = rawName || id;
    const nl = name.toLowerCase();
    const il = id.toLowerCase();
    let rank;
    if (!ql) rank = 5;
    else if (id === q) rank = 0;
    else if (nl === ql) rank = 1;
    else if (nl.startsWith(ql)) rank = 2;
    else if (nl.split(/\s+/).some((w) => w.startsWith(ql))) rank = 3;
    else if (il.startsWith(ql)) rank = 4;
    else if (nl.includes(ql)) rank = 5;
    else continue;
    out.push({ id, name, rank });
  }
  out.sort((a, b) => a.rank - b.rank || a.name.localeCompare(b.name) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return out.slice(0, 8);
}

const joinInput = $("join-input");

function updateSuggest() {
  const val = joinInput.value.trimStart();
  $("join-confirm").hidden = true;
  if (!val.startsWith("@") || !state.me) {
    hideSuggest();
    return;
  }
  const items = userMatches(val.slice(1).trim());
  state.suggest = { items, active: items.length ? 0 : -1 };
  renderSuggest();
}

function renderSuggest() {
  const { items, active } = state.suggest;
  const list = $("join-suggest");
  if (!items.length) {
    list.replaceChildren(
      h("li", { class: "suggest-empty", text: "No one by that name in your rooms. Type an exact user id, or pick someone from a room's members." }),
    );
  } else {
    list.replaceChildren(
      ...items.map((u, i) =>
        h(
          "li",
          {
            class: "suggest-opt",
            role: "option",
            id: `suggest-${i}`,
            "aria-selected": String(i === active),
            dataset: { user: u.id },
            title: `Message ${u.name} (@${u.id})`,
            onmousedown: (e) => e.preventDefault(), // keep the focus in the input
            onclick: () => pickUser(u.id),
          },
          avatar(u.id, u.name, "sm"),
          h("span", { class: "suggest-text" }, h("span", { class: "suggest-name", text: u.name }), h("span", { class: "suggest-id", text: `@${u.id}` })),
        ),
      ),
    );
  }
  list.hidden = false;
  joinInput.setAttribute("aria-expanded", "true");
  if (active >= 0) joinInput.setAttribute("aria-activedescendant", `suggest-${active}`);
  else joinInput.removeAttribute("aria-activedescendant");
}

function hideSuggest() {
  $("join-suggest").hidden = true;
  state.suggest = { items: [], active: -1 };
  joinInput.setAttribute("aria-expanded", "false");
  joinInput.removeAttribute("aria-activedescendant");
}

function pickUser(id) {
  hideSuggest();
  joinInput.value = "";
  $("join-error").textContent = "";
  $("join-confirm").hidden = true;
  openRoom(dmRoom(state.me, id));
}

joinInput.addEventListener("input", updateSuggest);
joinInput.addEventListener("focus", updateSuggest);
joinInput.addEventListener("blur", () => setTimeout(hideSuggest, 150));
joinInput.addEventListener("keydown", (e) => {
  if ($("join-suggest").hidden) return;
  const s = state.suggest;
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault();
    if (!s.items.length) return;
    const step = e.key === "ArrowDown" ? 1 : -1;
    s.active = (s.active + step + s.items.length) % s.items.length;
    renderSuggest();
  } else if (e.key === "Escape") {
    e.preventDefault();
    hideSuggest();
  } else if (e.key === "Tab" && s.items[s.active]) {
    // complete to the id, to read it before opening
    e.preventDefault();
    joinInput.value = `@${s.items[s.active].id}`;
    updateSuggest();
  }
});

/** A warning with two buttons, in `box`. */
function confirmIn(box, message, yesText, onYes) {
  const no = h("button", { class: "btn", type: "button", text: "Cancel", dataset: { confirm: "no" } });
  const yes = h("button", { class: "btn btn-primary", type: "button", text: yesText, dataset: { confirm: "yes" } });
  no.addEventListener("click", () => (box.hidden = true));
  yes.addEventListener("click", () => {
    box.hidden = true;
    onYes();
  });
  box.replaceChildren(h("p", {}, ...message), h("div", { class: "confirm-actions" }, yes, no));
  box.hidden = false;
  yes.focus();
}

/** The join form named an id never seen: ask before opening a conversation with it. */
function showJoinConfirm(id) {
  confirmIn(
    $("join-confirm"),
    ["No one with the user id ", h("code", { text: id }), " has been seen in your rooms: a message to it may reach nobody. Pick people from the list or from a room's members."],
    `Message @${id} anyway`,
    () => {
      state.confirmedPeers.add(id);
      joinInput.value = "";
      openRoom(dmRoom(state.me, id));
    },
  );
}

/** Sending to a conversation whose id was never seen: ask first. */
function askDmConfirm(v, text) {
  const peer = v.peer;
  confirmIn(
    $("dm-confirm"),
    ["You have never seen anyone with the user id ", h("code", { text: peer }), ": this message may reach nobody."],
    "Send anyway",
    () => {
      state.confirmedPeers.add(peer);
      if (state.current === v.room && send(text)) {
        input.value = "";
        autosize();
      }
    },
  );
}

window.addEventListener("hashchange", () => {
  const t = decodeURIComponent(location.hash.slice(1));
  if (!t || !state.me) return;
  try {
    openTarget(t);
  } catch {}
});

// ---------------------------------------------------------------- composer

const input = $("input");
function autosize() {
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 180)}px`;
}
input.addEventListener("input", () => {
  autosize();
  const v = state.current && state.rooms.get(state.current);
  if (v && v.joined && input.value && Date.now() - state.lastTypingSent > TYPING_SEND_MS) {
    state.lastTypingSent = Date.now();
    state.chat.typing(v.room);
  }
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value;
  if (!text.trim()) return;
  if (!send(text)) return;
  input.value = "";
  autosize();
  state.lastTypingSent = 0;
});

// ---------------------------------------------------------------- drawers

function closeDrawers() {
  document.body.classList.remove("show-sidebar");
  if (matchMedia("(max-width: 1100px)").matches) document.body.classList.remove("show-members");
  $("scrim").hidden = true;
  $("toggle-members").setAttribute("aria-pressed", String(document.body.classList.contains("show-members")));
}
$("open-sidebar").addEventListener("click", () => {
  document.body.classList.add("show-sidebar");
  $("scrim").hidden = false;
});
$("close-sidebar").addEventListener("click", closeDrawers);
$("scrim").addEventListener("click", closeDrawers);
$("toggle-members").addEventListener("click", () => {
  const wide = !matchMedia("(max-width: 1100px)").matches;
  const key = wide ? "hide-members" : "show-members";
  document.body.classList.toggle(key);
  const shown = wide ? !document.body.classList.contains("hide-members") : document.body.classList.contains("show-members");
  $("toggle-members").setAttribute("aria-pressed", String(shown));
  if (!wide) $("scrim").hidden = !shown;
});
$("close-members").addEventListener("click", () => {
  if (matchMedia("(max-width: 1100px)").matches) closeDrawers();
  else document.body.classList.add("hide-members");
});

// ---------------------------------------------------------------- boot

const saved = localStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
else showLogin();
