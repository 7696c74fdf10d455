//! Chat semantics (the wire protocol of `docs/PROTOCOL.md`), as an
//! [`App`] the reactor runs on each shard.
//!
//! Three roles, each owned by exactly one shard, which the [`Router`] finds:
//! - the **home** of a room (`room/`) numbers its messages (`seq`), stamps
//!   `ts`, hands them to the store, keeps a ring of recent frames, knows which
//!   shards have members and which users are present, and encodes each
//!   message frame once;
//! - a **member** shard (`member.rs`) keeps the room's local connections and
//!   queues the one shared frame on each of them;
//! - the **home of a user** (`user_home.rs`) knows on which shards the user
//!   has connections (to deliver DMs) and which rooms the user belongs to.
//!
//! Requests from a client are checked on its own shard (`client.rs`), then
//! posted to the role that decides. Everything between roles goes over the
//! bus (`msg.rs`), which is FIFO per pair of shards; that is what makes
//! join + replay + live exact without locks.

mod admin;
mod client;
pub mod cluster;
pub mod frames;
mod http_api;
mod http_me;
mod member;
pub mod msg;
mod room;
pub mod router;
mod session;
mod store_client;
mod user_home;

#[cfg(test)]
mod tests;

pub use self::session::Session;

use self::msg::ChatMsg;
use self::room::HomeRoom;
use self::router::{LocalRouter, Router};
use self::store_client::StoreClient;
use self::user_home::{Gather, UserHome};
use crate::app::{App, Port, Refusal};
use crate::auth::Authenticator;
use crate::bus::ConnRef;
use crate::config::Config;
use crate::http::{Request as HttpRequest, Response};
use crate::store::sqlite::ReadMarker;
use crate::store::{RoomState, StoreHandle};
use crate::ws::{close_code, OpCode};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A validated room name (`lobby`, `dm:alice:bob`).
pub type RoomName = Arc<str>;
/// A validated user id (the token's `sub`).
pub type UserId = Arc<str>;
/// A display name as a JSON string literal, escaped once per session.
pub type NameJson = Arc<str>;
/// A room's message number: 1, 2, 3... (0: none yet).
pub type Seq = u64;

/// The port the chat talks to its shard through.
pub type ChatPort = dyn Port<ChatMsg, Session>;

/// Chat state shared by all shards (read-only after start).
pub struct ChatShared {
    pub auth: Authenticator,
    pub store: Option<StoreHandle>,
    pub guest: bool,
    pub node_id: String,
    /// `POST /api/guest` per address (`--max-guests-per-ip-per-min`); a
    /// lock on a cold path, shared so every shard counts the same address.
    pub guest_rate: parking_lot::Mutex<crate::limits::KeyedRate<std::net::IpAddr>>,
}

impl ChatShared {
    pub fn new(auth: Authenticator, store: Option<StoreHandle>, cfg: &Config) -> Self {
        ChatShared {
            auth,
            store,
            guest: cfg.guest,
            node_id: cfg.node_id.clone(),
            guest_rate: parking_lot::Mutex::new(crate::limits::KeyedRate::per_minute(
                cfg.max_guests_per_ip_per_min,
                65_536,
            )),
        }
    }
}

/// Rooms and read markers loaded from the store at start; each shard takes
/// its part.
#[derive(Default)]
pub struct Preload {
    pub rooms: Vec<RoomState>,
    pub markers: Vec<ReadMarker>,
}

/// One shard's chat: its share of each role.
pub struct ChatApp {
    shard: usize,
    shared: Arc<ChatShared>,
    router: Box<dyn Router + Send>,
    /// Ring size: `--history-ring`, but never more than retention keeps.
    ring_cap: usize,
    /// `--retention-age` in ms: older ring entries are dropped.
    retention_age_ms: Option<u64>,
    /// Byte budget of one replay page.
    page_bytes: usize,
    // -- member role
    /// Room -> local member connection keys.
    local: HashMap<RoomName, Vec<usize>>,
    /// Room -> how many of its local members have batched presence (rooms
    /// with none are absent: their presence frames take the plain path).
    local_batched: HashMap<RoomName, u32>,
    /// User -> local connection keys (for DMs). Inline for up to two
    /// connections: no allocation for most users.
    users_here: HashMap<UserId, SmallVec<[usize; 2]>>,
    // -- home role
    homes: HashMap<RoomName, HomeRoom>,
    /// Rooms with a `presence_diff` pending, by when it is due.
    presence_due: std::collections::VecDeque<(u64, RoomName)>,
    // -- user-home role
    user_homes: HashMap<UserId, UserHome>,
    gathers: HashMap<u64, Gather>,
    next_gather: u64,
    store: StoreClient,
    /// Cluster mode (`--redis`): the broker and this shard's feed.
    cluster: Option<cluster::Cluster>,
    latency: hdrhistogram::Histogram<u64>,
    /// The operator's API: stats gathers and per-second windows.
    admin: admin::AdminState,
    last_export_ms: u64,
    last_sweep_ms: u64,
}

/// How often idle room homes are swept.
const SWEEP_MS: u64 = 10_000;

impl ChatApp {
    pub fn new(shard: usize, shards: usize, shared: Arc<ChatShared>, cfg: &Config) -> Self {
        ChatApp {
            shard,
            router: Box::new(LocalRouter::new(shards)),
            ring_cap: cfg
                .history_ring
                .min(
                    cfg.retention_messages
                        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                )
                .max(1),
            retention_age_ms: cfg
                .retention_age
                .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
            page_bytes: room::page_bytes(cfg.max_outbound_bytes),
            local: HashMap::new(),
            local_batched: HashMap::new(),
            users_here: HashMap::new(),
            homes: HashMap::new(),
            presence_due: std::collections::VecDeque::new(),
            user_homes: HashMap::new(),
            gathers: HashMap::new(),
            next_gather: 1,
            store: StoreClient::new(shared.store.clone()),
            cluster: None,
            shared,
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("static histogram bounds are valid"),
            admin: admin::AdminState::default(),
            last_export_ms: 0,
            last_sweep_ms: 0,
        }
    }

    /// Takes this shard's part of what the store had on disk.
    pub fn apply_preload(&mut self, preload: &Preload) {
        for r in &preload.rooms {
            let room: RoomName = Arc::from(r.room.as_str());
            if let Some((x, y)) = crate::protocol::dm_participants(&r.room) {
                for u in [x, y] {
                    if self.router.user_home(u) == self.shard {
                        self.user_homes
                            .entry(Arc::from(u))
                            .or_default()
                            .list(room.clone());
                    }
                }
            }
            if self.router.room_home(&r.room) == self.shard {
                let home = self.new_home_room(room, r.epoch.as_str().into());
                home.next_seq = r.last_seq + 1;
                home.committed = r.last_seq;
            }
        }
        for (user, room, seq, listed) in &preload.markers {
            let user: UserId = Arc::from(user.as_str());
            let room: RoomName = Arc::from(room.as_str());
            if *listed && self.router.user_home(&user) == self.shard {
                self.user_homes
                    .entry(user.clone())
                    .or_default()
                    .list(room.clone());
            }
            if self.router.room_home(&room) == self.shard {
                if let Some(home) = self.homes.get_mut(&room) {
                    home.read.insert(user, *seq);
                }
            }
        }
    }
}

impl App for ChatApp {
    type Msg = ChatMsg;
    type Session = Session;

    fn is_upgrade(&self, req: &HttpRequest) -> bool {
        req.path == "/ws"
    }

    fn admission(&self) -> bool {
        true
    }

    /// Verifies the upgrade's token; the error text goes into the 401 body.
    fn authenticate(
        &mut self,
        port: &mut ChatPort,
        req: &HttpRequest,
    ) -> Result<Box<Session>, Refusal> {
        let refuse = |message: String| Refusal {
            status: 401,
            message,
        };
        let token = req
            .query_param("token")
            .or_else(|| req.bearer().map(str::to_string))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| refuse("missing token".into()))?;
        let identity = self
            .shared
            .auth
            .verify(&token, crate::auth::now_secs())
            .map_err(|e| refuse(e.to_string()))?;
        let churn_burst = client::churn_burst(port.config().max_rooms_per_conn);
        Ok(Box::new(Session::new(
            identity,
            port.config().burst,
            churn_burst,
            port.now_ms(),
        )))
    }

    fn on_open(&mut self, port: &mut ChatPort, key: usize) {
        self.member_open(port, key);
    }

    fn on_message(&mut self, port: &mut ChatPort, key: usize, opcode: OpCode, payload: &[u8]) {
        if opcode == OpCode::Binary {
            port.close(
                key,
                close_code::UNSUPPORTED,
                "binary frames are not supported",
                crate::metrics::DisconnectReason::Protocol,
            );
            return;
        }
        // UTF-8 was validated by the codec; checking again keeps this crate
        // free of `unsafe` and costs little next to the JSON parse.
        let text = std::str::from_utf8(payload).unwrap_or("");
        self.on_text(port, key, text);
    }

    fn on_bus(&mut self, port: &mut ChatPort, msg: ChatMsg) {
        match msg {
            ChatMsg::Home(m) => self.on_home_msg(port, m),
            ChatMsg::Member(m) => self.on_member_msg(port, m),
            ChatMsg::User(m) => self.on_user_msg(port, m),
            ChatMsg::Admin(m) => self.on_admin_msg(port, m),
        }
    }

    fn on_http(&mut self, port: &mut ChatPort, key: usize, req: HttpRequest) -> Option<Response> {
        self.serve_http(port, key, req)
    }

    fn on_disconnect(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        conn: ConnRef,
        session: Box<Session>,
    ) {
        self.member_close(port, key, conn, *session);
    }

    fn end_of_turn(&mut self, port: &mut ChatPort) {
        self.store_turn(port);
        self.cluster_turn(port);
        self.presence_turn(port);
    }

    fn on_tick(&mut self, port: &mut ChatPort) {
        if port.now_ms() >= self.last_export_ms + 1000 {
            self.last_export_ms = port.now_ms();
            port.metrics().export_latency(&self.latency);
        }
        self.admin_tick(port);
        self.release_stale_joins(port);
        if port.now_ms() >= self.last_sweep_ms + SWEEP_MS {
            self.last_sweep_ms = port.now_ms();
            self.sweep_idle_rooms(port.now_ms());
        }
    }

    fn unready_backend(&self) -> Option<&'static str> {
        if let Some(b) = self.broker() {
            return (!b.available()).then_some("broker");
        }
        (!self.store.is_available()).then_some("store")
    }

    fn expires_at(session: &Session) -> Option<u64> {
        session.identity.exp
    }

    fn accepts_input(session: &Session) -> bool {
        session.inflight < session::MAX_INFLIGHT
    }

    fn on_drained(&mut self, port: &mut ChatPort, key: usize) {
        self.replay_next_pages(port, key);
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn push_small<T>(v: &mut Vec<T>, item: T) {
    reserve_small(v);
    v.push(item);
}

/// Grows a per-connection or per-user Vec one slot at a time while it is
/// small: most hold one or two items, and the default first growth (four
/// slots) is what an idle connection would otherwise pay for.
pub(crate) fn reserve_small<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(if v.len() < 4 { 1 } else { v.len() });
    }
}
