//! The operator's API behind the `/admin` page (admin token only):
//!
//! - `GET /api/admin/stats?top=N`: every shard's connections, deliveries/s
//!   and fan-out latency of the last second, the N busiest rooms, the store.
//!   Scattered to every shard over the bus and gathered on the shard that
//!   serves the request; no reactor waits for another.
//! - `GET /api/admin/users/{user}`: where the user is connected. The
//!   user's home shard knows on which shards; it asks each for its count
//!   and answers when all have.
//! - `POST /api/admin/disconnect {"user": ...}`: the same, and each of those
//!   shards closes the user's WebSockets with 1008 "disconnected by admin"
//!   (the client may reconnect: it is not a ban).
//!
//! Every answer is bounded: at most `MAX_TOP_ROOMS` rooms, at most
//! `MAX_LISTED_ROOMS` rooms of a user, at most `MAX_GATHERS` requests
//! gathering at once per shard (a stats request past that is 503).

pub mod stats;

use self::stats::{LatencyWindow, RoomStats, ShardRates, ShardStats, StoreState, TopRooms};
use super::msg::{AdminMsg, ChatMsg, MemberMsg};
use super::{now_unix_ms, ChatApp, ChatPort, UserId};
use crate::auth::Identity;
use crate::bus::ConnRef;
use crate::http::{Request, Response};
use crate::metrics::DisconnectReason;
use crate::ws::close_code;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

/// Stats requests gathering at once on one shard (each holds one HTTP
/// connection, which sends nothing else until answered).
const MAX_GATHERS: usize = 64;
/// Rooms of a user a lookup lists.
const MAX_LISTED_ROOMS: usize = 50;
/// The close reason a disconnected user's client sees.
pub const DISCONNECT_REASON: &str = "disconnected by admin";

/// A stats request waiting for every shard's part.
struct StatsGather {
    conn: ConnRef,
    top: usize,
    remaining: usize,
    parts: Vec<ShardStats>,
}

/// A user lookup waiting, at the user's home, for the user's shards.
struct UserGather {
    conn: ConnRef,
    user: UserId,
    disconnect: bool,
    remaining: usize,
    shards: Vec<(u32, u32)>,
    rooms: Vec<String>,
    rooms_total: usize,
}

/// One shard's admin state: gathers in flight and the per-second windows.
#[derive(Default)]
pub(super) struct AdminState {
    gathers: HashMap<u64, StatsGather>,
    user_gathers: HashMap<u64, UserGather>,
    next_gather: u64,
    latency: LatencyWindow,
    rates: ShardRates,
    last_second_ms: u64,
    /// Shard clock until which someone is watching (a stats request came in
    /// the last `WATCH_MS`): only then does the latency window record.
    watched_until_ms: u64,
    watching: bool,
}

/// How long after a stats request the latency window keeps recording.
const WATCH_MS: u64 = 10_000;

impl AdminState {
    fn in_flight(&self) -> usize {
        self.gathers.len() + self.user_gathers.len()
    }

    fn next_gather(&mut self) -> u64 {
        self.next_gather += 1;
        self.next_gather
    }
}

impl ChatApp {
    /// Serves `/api/admin/{rest}`; None: answered later over the bus.
    pub(super) fn serve_admin(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        req: &Request,
        rest: &str,
    ) -> Option<Response> {
        if let Err(resp) = self.admin_identity(port, req) {
            return Some(resp.header("cache-control", "no-store"));
        }
        let method = req.method.as_str();
        match rest {
            "stats" if method == "GET" => self.stats_request(port, key, req),
            "disconnect" if method == "POST" => {
                #[derive(serde::Deserialize)]
                struct Body {
                    user: String,
                }
                match serde_json::from_slice::<Body>(&req.body) {
                    Ok(b) => self.user_request(port, key, &b.user, true),
                    Err(_) => Some(Response::error(400, "body must be {\"user\": \"...\"}")),
                }
            }
            "stats" | "disconnect" => Some(Response::error(405, "method not allowed")),
            _ => match rest.strip_prefix("users/") {
                Some(user) if method == "GET" => {
                    let user = crate::http::percent_decode(user);
                    self.user_request(port, key, &user, false)
                }
                Some(_) => Some(Response::error(405, "method not allowed")),
                None => Some(Response::error(404, "not found")),
            },
        }
    }

    fn admin_identity(&self, port: &ChatPort, req: &Request) -> Result<Identity, Response> {
        let identity = self.bearer_identity(port, req)?;
        if !identity.admin {
            return Err(Response::error(403, "admin token required"));
        }
        Ok(identity)
    }

    fn stats_request(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        req: &Request,
    ) -> Option<Response> {
        let top = match req.query_param("top").filter(|v| !v.is_empty()) {
            None => stats::DEFAULT_TOP_ROOMS,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=stats::MAX_TOP_ROOMS).contains(&n) => n,
                _ => return Some(Response::error(400, "top must be 1..50")),
            },
        };
        if self.admin.in_flight() >= MAX_GATHERS {
            return Some(Response::error(503, "too many stats requests in flight"));
        }
        let gather = self.admin.next_gather();
        self.admin.gathers.insert(
            gather,
            StatsGather {
                conn: port.conn_ref(key),
                top,
                remaining: port.shards(),
                parts: Vec::with_capacity(port.shards()),
            },
        );
        for shard in 0..port.shards() {
            let msg = AdminMsg::Stats {
                gather,
                reply_shard: self.shard as u32,
                top,
            };
            port.bus(shard, ChatMsg::Admin(msg));
        }
        None
    }

    fn user_request(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        user: &str,
        disconnect: bool,
    ) -> Option<Response> {
        if !crate::protocol::valid_user(user) {
            return Some(Response::error(400, "invalid user id"));
        }
        let msg = AdminMsg::User {
            user: user.into(),
            conn: port.conn_ref(key),
            disconnect,
        };
        port.bus(self.router.user_home(user), ChatMsg::Admin(msg));
        None
    }

    pub(super) fn on_admin_msg(&mut self, port: &mut ChatPort, msg: AdminMsg) {
        match msg {
            AdminMsg::Stats {
                gather,
                reply_shard,
                top,
            } => {
                self.admin.watched_until_ms = port.now_ms() + WATCH_MS;
                let part = Box::new(self.shard_stats(port, top));
                port.bus(
                    reply_shard as usize,
                    ChatMsg::Admin(AdminMsg::StatsPart { gather, part }),
                );
            }
            AdminMsg::StatsPart { gather, part } => {
                let Some(g) = self.admin.gathers.get_mut(&gather) else {
                    return;
                };
                g.parts.push(*part);
                g.remaining -= 1;
                if g.remaining == 0 {
                    if let Some(g) = self.admin.gathers.remove(&gather) {
                        self.answer_stats(port, g);
                    }
                }
            }
            AdminMsg::User {
                user,
                conn,
                disconnect,
            } => self.user_lookup(port, &user, conn, disconnect),
            AdminMsg::UserHere {
                gather,
                reply_shard,
                user,
                disconnect,
            } => {
                let connections = self.user_here(port, &user, disconnect);
                let msg = AdminMsg::UserHereReply {
                    gather,
                    shard: self.shard as u32,
                    connections,
                };
                port.bus(reply_shard as usize, ChatMsg::Admin(msg));
            }
            AdminMsg::UserHereReply {
                gather,
                shard,
                connections,
            } => {
                let Some(g) = self.admin.user_gathers.get_mut(&gather) else {
                    return;
                };
                if connections > 0 {
                    g.shards.push((shard, connections));
                }
                g.remaining -= 1;
                if g.remaining == 0 {
                    if let Some(g) = self.admin.user_gathers.remove(&gather) {
                        self.answer_user(port, g);
                    }
                }
            }
        }
    }

    /// This shard's part: its counters, its rate windows, its busiest rooms.
    fn shard_stats(&self, port: &ChatPort, top: usize) -> ShardStats {
        let now = port.now_ms();
        let m = port.metrics();
        let mut rooms = TopRooms::new(top);
        for (name, h) in self.homes.iter().filter(|(_, h)| h.dm.is_none()) {
            rooms.offer(RoomStats {
                room: name.clone(),
                members: h.users.len(),
                connections: h.shard_members.iter().map(|&n| u64::from(n)).sum(),
                seq: h.committed,
                msgs_per_sec: h.rate.per_sec(now),
            });
        }
        ShardStats {
            shard: self.shard,
            connections: m.connections_open.load(Relaxed),
            sessions: self.users_here.values().map(|k| k.len()).sum(),
            users: self.users_here.len(),
            rooms: self.homes.len(),
            deliveries_total: m.deliveries.load(Relaxed),
            deliveries_per_sec: self.admin.rates.deliveries_per_sec,
            publishes_per_sec: self.admin.rates.publishes_per_sec,
            latency: self.admin.latency.last,
            top_rooms: rooms.into_sorted(),
        }
    }

    fn answer_stats(&mut self, port: &mut ChatPort, g: StatsGather) {
        let Some(key) = port.resolve(g.conn) else {
            return; // the client went away
        };
        let body = stats::stats_json(g.parts, &self.store_state(), g.top, now_unix_ms());
        port.respond_http(
            key,
            Response::json(200, body).header("cache-control", "no-store"),
        );
    }

    fn store_state(&self) -> StoreState {
        if let Some(b) = self.broker() {
            return StoreState {
                kind: "redis",
                ready: b.available(),
                ..Default::default()
            };
        }
        match &self.shared.store {
            None => StoreState {
                kind: "memory",
                ready: true,
                ..Default::default()
            },
            Some(s) => StoreState {
                kind: "sqlite",
                ready: s.is_available(),
                queue_depth: Some(s.queued()),
                commits: Some(s.commits()),
                last_commit_ms: s.last_commit_unix_ms(),
            },
        }
    }

    /// At the user's home: asks every shard where the user is connected
    /// for its count (closing them with `disconnect`), then answers.
    fn user_lookup(&mut self, port: &mut ChatPort, user: &UserId, conn: ConnRef, disconnect: bool) {
        let home = self.user_homes.get(user);
        let shards: Vec<u32> = home.map_or_else(Vec::new, |h| {
            h.shard_counts().iter().map(|&(s, _)| s).collect()
        });
        let rooms = home.map_or(&[][..], |h| h.rooms());
        let g = UserGather {
            conn,
            user: user.clone(),
            disconnect,
            remaining: shards.len(),
            shards: Vec::with_capacity(shards.len()),
            rooms: rooms
                .iter()
                .take(MAX_LISTED_ROOMS)
                .map(|r| r.to_string())
                .collect(),
            rooms_total: rooms.len(),
        };
        if shards.is_empty() {
            self.answer_user(port, g); // offline: nothing to ask
            return;
        }
        if self.admin.in_flight() >= MAX_GATHERS {
            let reply = MemberMsg::HttpReply {
                conn,
                status: 503,
                body: json!({"error": "too many admin requests in flight"})
                    .to_string()
                    .into(),
            };
            self.router.to_conn_shard(port, conn, reply);
            return;
        }
        if disconnect {
            tracing::info!(user = %user, shards = shards.len(), "admin: disconnecting user");
        }
        let gather = self.admin.next_gather();
        self.admin.user_gathers.insert(gather, g);
        for shard in shards {
            let msg = AdminMsg::UserHere {
                gather,
                reply_shard: self.shard as u32,
                user: user.clone(),
                disconnect,
            };
            port.bus(shard as usize, ChatMsg::Admin(msg));
        }
    }

    fn answer_user(&mut self, port: &mut ChatPort, mut g: UserGather) {
        g.shards.sort_unstable();
        let connections: u32 = g.shards.iter().map(|(_, n)| n).sum();
        let body = json!({
            "user": &*g.user,
            "online": connections > 0,
            "connections": connections,
            "shards": g.shards.iter().map(|(s, n)| json!({"shard": s, "connections": n})).collect::<Vec<_>>(),
            "rooms": g.rooms,
            "rooms_total": g.rooms_total,
            "disconnected": if g.disconnect { connections } else { 0 },
        })
        .to_string();
        let reply = MemberMsg::HttpReply {
            conn: g.conn,
            status: 200,
            body: body.into(),
        };
        self.router.to_conn_shard(port, g.conn, reply);
    }

    /// The user's WebSockets on this shard: how many; with `disconnect`,
    /// each is closed (1008, "disconnected by admin").
    fn user_here(&mut self, port: &mut ChatPort, user: &str, disconnect: bool) -> u32 {
        let keys: Vec<usize> = self
            .users_here
            .get(user)
            .map(|k| k.to_vec())
            .unwrap_or_default();
        if disconnect {
            for &key in &keys {
                port.close(
                    key,
                    close_code::POLICY,
                    DISCONNECT_REASON,
                    DisconnectReason::Policy,
                );
            }
        }
        u32::try_from(keys.len()).unwrap_or(u32::MAX)
    }

    /// A fan-out latency sample; while an admin page watches it also feeds
    /// the live chart's window (no cost on the hot path otherwise).
    pub(super) fn record_latency(&mut self, us: u64) {
        let _ = self.latency.record(us);
        if self.admin.watching {
            self.admin.latency.record(us);
        }
    }

    /// Once a second: the rates and the latency window move on.
    pub(super) fn admin_tick(&mut self, port: &ChatPort) {
        let now = port.now_ms();
        if now < self.admin.last_second_ms + 1000 {
            return;
        }
        let elapsed_ms = now - self.admin.last_second_ms;
        self.admin.last_second_ms = now;
        let m = port.metrics();
        let (deliveries, publishes) = (m.deliveries.load(Relaxed), m.publishes.load(Relaxed));
        self.admin.rates.update(deliveries, publishes, elapsed_ms);
        self.admin.latency.rotate();
        self.admin.watching = now < self.admin.watched_until_ms;
    }
}
