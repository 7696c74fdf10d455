//! The command thread: one connection, one pipeline per loop turn.

use super::scripts;
use super::{
    call_reply, opt_reply, BrokerError, BrokerEvent, Published, RangePage, Request, RoomListEntry,
    RoomState, Shared, StreamEntry,
};
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{Cmd, ConnectionLike, Pipeline, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SHA1 of each script, in `scripts::ALL` order.
struct Shas {
    publish: String,
    state: String,
    set_read: String,
    presence_add: String,
    presence_remove: String,
    node_down: String,
    rooms_of: String,
}

impl Shas {
    fn new() -> Self {
        let h = |s: &str| redis::Script::new(s).get_hash().to_string();
        Shas {
            publish: h(scripts::PUBLISH),
            state: h(scripts::STATE),
            set_read: h(scripts::SET_READ),
            presence_add: h(scripts::PRESENCE_ADD),
            presence_remove: h(scripts::PRESENCE_REMOVE),
            node_down: h(scripts::NODE_DOWN),
            rooms_of: h(scripts::ROOMS_OF),
        }
    }
}

struct Cmd2 {
    shared: Arc<Shared>,
    client: redis::Client,
    con: Option<redis::Connection>,
    /// The boot id this node has seen since its first connect.
    boot: Option<String>,
    shas: Shas,
    /// This node's registration was seen in `nodes` at least once.
    registered: bool,
    backoff: Duration,
    next_heartbeat: Instant,
    next_sweep: Instant,
}

pub(crate) fn run(shared: Arc<Shared>, client: redis::Client, rx: Receiver<Request>) {
    let now = Instant::now();
    let mut c = Cmd2 {
        backoff: shared.cfg.backoff_min,
        shared,
        client,
        con: None,
        boot: None,
        shas: Shas::new(),
        registered: false,
        next_heartbeat: now,
        next_sweep: now,
    };
    loop {
        if c.con.is_none() && !c.connect() {
            // Down: answer everything at once until the next attempt.
            let until = Instant::now() + c.backoff;
            c.backoff = (c.backoff * 2).min(c.shared.cfg.backoff_max);
            loop {
                match rx.recv_deadline(until) {
                    Ok(Request::Stop { .. }) | Err(RecvTimeoutError::Disconnected) => return,
                    Ok(r) => r.fail(BrokerError::Unavailable("redis is down".into())),
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
            continue;
        }
        let deadline = c.next_heartbeat.min(c.next_sweep);
        let mut batch = Vec::new();
        match rx.recv_deadline(deadline) {
            Ok(r) => batch.push(r),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                c.stop(true);
                return;
            }
        }
        while batch.len() < c.shared.cfg.batch_max.max(1) {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let stop = batch.iter().position(|r| matches!(r, Request::Stop { .. }));
        let stop_req = stop.map(|i| batch.split_off(i));
        if !batch.is_empty() {
            c.run_batch(batch);
        }
        if let Some(rest) = stop_req {
            let clean = matches!(rest.first(), Some(Request::Stop { clean: true }));
            for r in rest.into_iter().skip(1) {
                r.fail(BrokerError::Stopped);
            }
            c.stop(clean);
            return;
        }
        c.timers();
    }
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn server_error(v: &Value) -> Option<(String, String)> {
    match v {
        Value::ServerError(e) => {
            Some((e.code().to_string(), e.details().unwrap_or("").to_string()))
        }
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn uint(v: &Value) -> u64 {
    int(v).and_then(|i| u64::try_from(i).ok()).unwrap_or(0)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => Vec::new(),
    }
}

/// An error reply as the caller sees it.
fn to_error(v: &Value) -> Option<BrokerError> {
    let (code, detail) = server_error(v)?;
    Some(if code == "BOOT" {
        BrokerError::HistoryLost
    } else {
        BrokerError::Server(format!("{code} {detail}"))
    })
}

/// `{user, seq, user, seq, ...}` as pairs.
fn read_pairs(v: Value) -> Vec<(String, u64)> {
    let flat = items(v);
    flat.chunks_exact(2)
        .filter_map(|p| Some((text(&p[0])?, uint(&p[1]))))
        .collect()
}

fn stream_entry(v: Value) -> Option<StreamEntry> {
    let mut parts = items(v).into_iter();
    let id = text(&parts.next()?)?;
    let seq = id.split('-').next()?.parse().ok()?;
    let mut ts = 0;
    let mut json = None;
    let mut fields = items(parts.next()?).into_iter();
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        match text(&k).as_deref() {
            Some("ts") => ts = uint(&v),
            Some("frame") => {
                if let Value::BulkString(b) = v {
                    json = Some(Bytes::from(b));
                }
            }
            _ => {}
        }
    }
    Some(StreamEntry {
        seq,
        ts,
        json: json?,
    })
}

impl Cmd2 {
    fn p(&self) -> &str {
        &self.shared.cfg.prefix
    }

    fn node(&self) -> &str {
        &self.shared.cfg.node_id
    }

    fn key(&self, room: &str, what: &str) -> String {
        format!("{}{{{}}}:{}", self.p(), room, what)
    }

    /// The keys and arguments of `PRESENCE_ADD` (with the display name) and
    /// `PRESENCE_REMOVE` (without): the same but for the name.
    fn presence_args(&self, c: &mut Cmd, room: &str, user: &str, name_json: Option<&str>) {
        let chans = self.channels(room);
        c.arg(3)
            .arg(self.key(room, "pn"))
            .arg(self.key(room, "pu"))
            .arg(format!("{}np:{}", self.p(), self.node()))
            .arg(user)
            .arg(self.node());
        if let Some(name_json) = name_json {
            c.arg(name_json);
        }
        c.arg(room).arg(chans.len()).arg(&chans);
    }

    /// Where a room's frames are published: its channel, or a DM room's two
    /// users' channels.
    fn channels(&self, room: &str) -> Vec<String> {
        match crate::protocol::dm_participants(room) {
            Some((x, y)) => vec![
                format!("{}user:{}", self.p(), x),
                format!("{}user:{}", self.p(), y),
            ],
            None => vec![format!("{}room:{}", self.p(), room)],
        }
    }

    fn script(&self, sha: &str, code: &str, eval: bool) -> Cmd {
        if eval {
            let mut c = redis::cmd("EVAL");
            c.arg(code);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(sha);
            c
        }
    }

    fn connect(&mut self) -> bool {
        match self.try_connect() {
            Ok(()) => {
                self.backoff = self.shared.cfg.backoff_min;
                self.shared.set_link(true, true, "");
                true
            }
            Err(e) => {
                tracing::debug!("broker: connect failed: {e}");
                self.con = None;
                self.shared.set_link(true, false, &format!("redis: {e}"));
                false
            }
        }
    }

    fn try_connect(&mut self) -> redis::RedisResult<()> {
        let t = self.shared.cfg.io_timeout;
        let mut con = self.client.get_connection_with_timeout(t)?;
        con.set_read_timeout(Some(t))?;
        con.set_write_timeout(Some(t))?;
        let mut pipe = redis::pipe();
        let name = format!("corechat-cmd-{}", self.shared.cfg.node_id);
        pipe.cmd("CLIENT").arg("SETNAME").arg(name).ignore();
        for s in scripts::ALL {
            pipe.cmd("SCRIPT").arg("LOAD").arg(*s).ignore();
        }
        pipe.query::<()>(&mut con)?;
        self.con = Some(con);
        let first = self.boot.is_none();
        self.check_boot(None)?;
        if first {
            // A fresh start under a reused node id: whatever the previous
            // process left in presence is stale.
            let v = self.node_down("self")?;
            self.report_left(v);
        }
        self.next_heartbeat = Instant::now();
        self.heartbeat();
        if self.con.is_none() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "heartbeat failed",
            )));
        }
        Ok(())
    }

    fn query(&mut self, c: &Cmd) -> redis::RedisResult<Value> {
        let con = self
            .con
            .as_mut()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "not connected")))?;
        con.req_command(c)
    }

    /// Compares the `boot` key with the id seen so far (`seen`: already
    /// read, else read now); reports `HistoryLost` and adopts a new one if it
    /// changed or vanished. Two nodes racing write with NX and adopt the
    /// same winner.
    fn check_boot(&mut self, seen: Option<Option<String>>) -> redis::RedisResult<()> {
        let key = format!("{}boot", self.p());
        let seen = match seen {
            Some(s) => s,
            None => text(&self.query(redis::cmd("GET").arg(&key))?),
        };
        if seen.is_some() && seen == self.boot {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(new_id()).arg("NX").ignore();
        pipe.cmd("GET").arg(&key);
        let con = self
            .con
            .as_mut()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "not connected")))?;
        let (now,): (Option<String>,) = pipe.query(con)?;
        if self.boot.is_some() {
            tracing::warn!("broker: Redis lost its data (boot id changed); history lost");
            self.shared.emit(BrokerEvent::HistoryLost);
        }
        self.boot = now;
        Ok(())
    }

    fn lost_connection(&mut self, e: &redis::RedisError) {
        tracing::warn!("broker: command link lost: {e}");
        self.con = None;
        self.shared.set_link(true, false, &format!("redis: {e}"));
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if self.con.is_some() && now >= self.next_heartbeat {
            self.heartbeat();
        }
        if self.con.is_some() && now >= self.next_sweep {
            self.next_sweep = now + self.shared.cfg.sweep_interval;
            match self.node_down("sweep") {
                Ok(v) => self.report_left(v),
                Err(e) => self.lost_connection(&e),
            }
        }
    }

    /// The NODE_DOWN script: EVALSHA, then EVAL if Redis forgot it.
    fn node_down(&mut self, mode: &str) -> redis::RedisResult<Value> {
        let mut v = Value::Nil;
        for eval in [false, true] {
            let mut c = self.script(&self.shas.node_down, scripts::NODE_DOWN, eval);
            c.arg(0).arg(self.p()).arg(self.node()).arg(mode);
            v = self.query(&c)?;
            if server_error(&v).is_none_or(|(code, _)| code != "NOSCRIPT") {
                break;
            }
        }
        Ok(v)
    }

    fn report_left(&mut self, v: Value) {
        let mut pairs = Vec::new();
        let mut it = items(v).into_iter();
        while let (Some(r), Some(u)) = (it.next(), it.next()) {
            if let (Some(r), Some(u)) = (text(&r), text(&u)) {
                pairs.push((r, u));
            }
        }
        if !pairs.is_empty() {
            self.shared.emit(BrokerEvent::PresenceLeft { pairs });
        }
    }

    fn heartbeat(&mut self) {
        self.next_heartbeat = Instant::now() + self.shared.cfg.heartbeat_interval;
        let ttl = u64::try_from(self.shared.cfg.heartbeat_ttl.as_millis()).unwrap_or(5000);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{}hb:{}", self.p(), self.node()))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore();
        pipe.cmd("SADD")
            .arg(format!("{}nodes", self.p()))
            .arg(self.node());
        pipe.cmd("GET").arg(format!("{}boot", self.p()));
        let Some(con) = self.con.as_mut() else {
            return;
        };
        let res: redis::RedisResult<(i64, Option<String>)> = pipe.query(con);
        match res {
            Ok((added, boot)) => {
                let lost = boot != self.boot;
                if let Err(e) = self.check_boot(Some(boot)) {
                    return self.lost_connection(&e);
                }
                if added == 1 && self.registered && !lost {
                    tracing::warn!("broker: this node's presence was swept; re-registering");
                    self.shared.emit(BrokerEvent::PresenceReset);
                }
                self.registered = true;
            }
            Err(e) => self.lost_connection(&e),
        }
    }

    fn stop(&mut self, clean: bool) {
        if !clean || self.con.is_none() {
            return;
        }
        if let Ok(v) = self.node_down("self") {
            self.report_left(v);
        }
    }

    /// Adds one request's commands; returns how many.
    fn encode(&self, r: &Request, pipe: &mut Pipeline, eval: bool) -> usize {
        let s = &self.shas;
        match r {
            Request::Publish(req, _) => {
                let mut c = self.script(&s.publish, scripts::PUBLISH, eval);
                c.arg(4)
                    .arg(self.key(&req.room, "seq"))
                    .arg(self.key(&req.room, "epoch"))
                    .arg(self.key(&req.room, "log"))
                    .arg(format!("{}boot", self.p()))
                    .arg(self.boot.as_deref().unwrap_or(""))
                    .arg(new_id())
                    .arg(self.shared.cfg.stream_maxlen)
                    .arg(req.ts)
                    .arg(&req.parts.prefix)
                    .arg(&req.parts.suffix)
                    .arg(self.node())
                    .arg(&req.room)
                    .arg(self.shared.cfg.retention_age_ms);
                let chans = self.channels(&req.room);
                c.arg(chans.len()).arg(&chans);
                match crate::protocol::dm_participants(&req.room) {
                    Some((x, y)) => {
                        c.arg(2)
                            .arg(format!("{}rooms:{x}", self.p()))
                            .arg(format!("{}rooms:{y}", self.p()));
                    }
                    None => {
                        c.arg(0);
                    }
                }
                pipe.add_command(c);
                1
            }
            Request::Ephemeral {
                room,
                json,
                except_user,
            } => {
                let chans = self.channels(room);
                let payload = format!(
                    "0 - {} {} {}\n{}",
                    self.node(),
                    except_user.as_deref().unwrap_or("-"),
                    room,
                    json
                );
                for ch in &chans {
                    pipe.cmd("PUBLISH").arg(ch).arg(&payload);
                }
                chans.len()
            }
            Request::State {
                room, user, reads, ..
            } => {
                let mut c = self.script(&s.state, scripts::STATE, eval);
                c.arg(5)
                    .arg(self.key(room, "seq"))
                    .arg(self.key(room, "epoch"))
                    .arg(self.key(room, "read"))
                    .arg(format!("{}boot", self.p()))
                    .arg(self.key(room, "pu"))
                    .arg(self.boot.as_deref().unwrap_or(""))
                    .arg(new_id())
                    .arg(user)
                    .arg(*reads);
                pipe.add_command(c);
                1
            }
            Request::Range { room, q, .. } => {
                let key = self.key(room, "log");
                let count = q.limit.max(1) + 1;
                match (q.after, q.before) {
                    (Some(after), before) => {
                        let end = match before {
                            Some(b) => format!("{}-0", b.saturating_sub(1)),
                            None => "+".into(),
                        };
                        pipe.cmd("XRANGE")
                            .arg(key)
                            .arg(format!("{}-0", after.saturating_add(1)))
                            .arg(end)
                            .arg("COUNT")
                            .arg(count);
                    }
                    (None, before) => {
                        let start = match before {
                            Some(b) => format!("{}-0", b.saturating_sub(1)),
                            None => "+".into(),
                        };
                        pipe.cmd("XREVRANGE")
                            .arg(key)
                            .arg(start)
                            .arg("-")
                            .arg("COUNT")
                            .arg(count);
                    }
                }
                1
            }
            Request::SetRead {
                room, user, seq, ..
            } => {
                let mut c = self.script(&s.set_read, scripts::SET_READ, eval);
                c.arg(2)
                    .arg(self.key(room, "read"))
                    .arg(self.key(room, "seq"))
                    .arg(user)
                    .arg(*seq);
                pipe.add_command(c);
                1
            }
            Request::SetListed { user, room, listed } => {
                pipe.cmd(if *listed { "SADD" } else { "SREM" })
                    .arg(format!("{}rooms:{user}", self.p()))
                    .arg(room);
                1
            }
            Request::RoomsOf { user, .. } => {
                let mut c = self.script(&s.rooms_of, scripts::ROOMS_OF, eval);
                c.arg(0).arg(self.p()).arg(user);
                pipe.add_command(c);
                1
            }
            Request::PresenceAdd {
                room,
                user,
                name_json,
                ..
            } => {
                let mut c = self.script(&s.presence_add, scripts::PRESENCE_ADD, eval);
                self.presence_args(&mut c, room, user, Some(name_json));
                pipe.add_command(c);
                1
            }
            Request::PresenceRemove { room, user, .. } => {
                let mut c = self.script(&s.presence_remove, scripts::PRESENCE_REMOVE, eval);
                self.presence_args(&mut c, room, user, None);
                pipe.add_command(c);
                1
            }
            Request::Presence { room, .. } => {
                pipe.cmd("HGETALL").arg(self.key(room, "pn"));
                1
            }
            Request::Stop { .. } => 0,
        }
    }

    /// Sends the requests as one pipeline; answers each (a second round
    /// trip with EVAL only for scripts Redis did not know).
    fn run_batch(&mut self, batch: Vec<Request>) {
        let mut results = match self.round_trip(&batch, false) {
            Ok(r) => r,
            Err(e) => {
                self.lost_connection(&e);
                for r in batch {
                    r.fail(BrokerError::Unavailable(e.to_string()));
                }
                return;
            }
        };
        // NOSCRIPT (Redis restarted, SCRIPT FLUSH): send those again with EVAL.
        let retry: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, vals)| {
                vals.iter()
                    .any(|v| server_error(v).is_some_and(|(c, _)| c == "NOSCRIPT"))
            })
            .map(|(i, _)| i)
            .collect();
        let mut batch: Vec<Option<Request>> = batch.into_iter().map(Some).collect();
        if !retry.is_empty() {
            let again: Vec<Request> = retry.iter().filter_map(|&i| batch[i].take()).collect();
            match self.round_trip(&again, true) {
                Ok(vals) => {
                    for ((&i, r), v) in retry.iter().zip(again).zip(vals) {
                        batch[i] = Some(r);
                        results[i] = v;
                    }
                }
                Err(e) => {
                    self.lost_connection(&e);
                    for r in again {
                        r.fail(BrokerError::Unavailable(e.to_string()));
                    }
                }
            }
        }
        // A refused boot id: report the loss before answering anything.
        let lost = results
            .iter()
            .flatten()
            .any(|v| server_error(v).is_some_and(|(c, _)| c == "BOOT"));
        if lost {
            if let Err(e) = self.check_boot(None) {
                self.lost_connection(&e);
            }
        }
        for (r, vals) in batch.into_iter().zip(results) {
            if let Some(r) = r {
                complete(r, vals);
            }
        }
    }

    fn round_trip(&mut self, batch: &[Request], eval: bool) -> redis::RedisResult<Vec<Vec<Value>>> {
        let mut pipe = redis::pipe();
        let counts: Vec<usize> = batch
            .iter()
            .map(|r| self.encode(r, &mut pipe, eval))
            .collect();
        let total: usize = counts.iter().sum();
        let mut values = if total == 0 {
            Vec::new()
        } else {
            let con = self
                .con
                .as_mut()
                .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "not connected")))?;
            let v = con.req_packed_commands(&pipe.get_packed_pipeline(), 0, total)?;
            let sh = &self.shared;
            sh.round_trips
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            sh.requests
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            v
        };
        if values.len() != total {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "short pipeline reply",
            )));
        }
        let mut out = Vec::with_capacity(batch.len());
        let mut rest = values.drain(..);
        for n in counts {
            out.push(rest.by_ref().take(n).collect());
        }
        Ok(out)
    }
}

/// Answers one request from its replies.
fn complete(r: Request, vals: Vec<Value>) {
    let first = vals.into_iter().next().unwrap_or(Value::Nil);
    let err = to_error(&first);
    match r {
        Request::Publish(_, reply) => {
            let res = match err {
                Some(e) => Err(e),
                None => {
                    let v = items(first);
                    match (v.first().map(uint), v.get(1).and_then(text)) {
                        (Some(seq), Some(epoch)) if seq > 0 => Ok(Published { seq, epoch }),
                        _ => Err(BrokerError::Server("bad publish reply".into())),
                    }
                }
            };
            call_reply(reply, res);
        }
        Request::State { reply, .. } => {
            let res = match err {
                Some(e) => Err(e),
                None => {
                    let v = items(first);
                    match (v.first(), v.get(1).and_then(text), v.get(2), v.get(3)) {
                        (Some(seq), Some(epoch), Some(read), Some(members)) => Ok(RoomState {
                            seq: uint(seq),
                            epoch,
                            read: uint(read),
                            members: uint(members),
                            reads: v.get(4).cloned().map(read_pairs).unwrap_or_default(),
                        }),
                        _ => Err(BrokerError::Server("bad state reply".into())),
                    }
                }
            };
            call_reply(reply, res);
        }
        Request::Range { q, reply, .. } => {
            let res = match err {
                Some(e) => Err(e),
                None => {
                    let mut entries: Vec<StreamEntry> =
                        items(first).into_iter().filter_map(stream_entry).collect();
                    let limit = q.limit.max(1);
                    let has_more = entries.len() > limit;
                    if q.after.is_some() {
                        entries.truncate(limit);
                    } else {
                        entries.truncate(limit);
                        entries.reverse();
                    }
                    Ok(RangePage { entries, has_more })
                }
            };
            call_reply(reply, res);
        }
        Request::SetRead { reply, .. } => {
            let res = match err {
                Some(e) => Err(e),
                None => {
                    let v = items(first);
                    let changed = v.first().map(uint) == Some(1);
                    Ok(changed.then(|| v.get(1).map(uint).unwrap_or(0)))
                }
            };
            opt_reply(reply, res);
        }
        Request::RoomsOf { reply, .. } => {
            let res = match err {
                Some(e) => Err(e),
                None => {
                    let mut out = Vec::new();
                    let mut it = items(first).into_iter();
                    while let (Some(r), Some(s), Some(m)) = (it.next(), it.next(), it.next()) {
                        out.push(RoomListEntry {
                            room: text(&r).unwrap_or_default(),
                            seq: uint(&s),
                            read: uint(&m),
                        });
                    }
                    out.sort_by(|a, b| a.room.cmp(&b.room));
                    Ok(out)
                }
            };
            call_reply(reply, res);
        }
        Request::PresenceAdd { reply, .. } | Request::PresenceRemove { reply, .. } => {
            let res = match err {
                Some(e) => Err(e),
                None => Ok(uint(&first) == 1),
            };
            opt_reply(reply, res);
        }
        Request::Presence { reply, .. } => {
            let res = match err {
                Some(e) => Err(e),
                None => {
                    let mut users: Vec<(String, String)> = Vec::new();
                    let flat = match first {
                        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                        v => items(v),
                    };
                    let mut it = flat.into_iter();
                    while let (Some(f), Some(n)) = (it.next(), it.next()) {
                        let (Some(f), Some(n)) = (text(&f), text(&n)) else {
                            continue;
                        };
                        let user = f.split('|').next().unwrap_or("").to_string();
                        users.push((user, n));
                    }
                    users.sort();
                    users.dedup_by(|a, b| a.0 == b.0);
                    Ok(users)
                }
            };
            call_reply(reply, res);
        }
        Request::Ephemeral { .. } | Request::SetListed { .. } => {
            if let Some(e) = err {
                tracing::debug!("broker: fire-and-forget request failed: {e}");
            }
        }
        Request::Stop { .. } => {}
    }
}
