//! Chat semantics on one shard (PROTOCOL.md sections 3 to 5).
//!
//! Three roles, each owned by exactly one shard, found by hashing a name:
//! - the **home** of a room numbers its messages (`seq`), stamps `ts`, hands
//!   them to the store, keeps a ring of recent frames, knows which shards have
//!   members and which users are present, and encodes each message frame once;
//! - a **member** shard keeps the room's local connections and queues the one
//!   shared frame on each of them;
//! - the **home of a user** knows on which shards the user has connections
//!   (to deliver DMs) and which rooms the user belongs to (for `rooms`).
//!
//! Everything between roles goes over the bus, which is FIFO per pair of
//! shards; that is what makes join + replay + live exact without locks.

use crate::auth::{Authenticator, Identity};
use crate::bus::{home_of, BusMsg, ConnRef, ReplyTo};
use crate::http::{Request as HttpRequest, Response};
use crate::limits::{Admit, TokenBucket};
use crate::metrics;
use crate::protocol::{self, ErrorCode, MessageFields, ProtoError, ReqId, Request};
use crate::reactor::{Core, Shared};
use crate::store::{RangeQuery, RoomState, StoreHandle, StoredMessage};
use crate::ws::{self, close_code};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use smallvec::SmallVec;
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Messages fetched from the store per replay page.
const REPLAY_PAGE: usize = 1000;
/// Window over which unparsable frames are counted toward close 1008.
const BAD_FRAME_WINDOW_MS: u64 = 60_000;

/// Chat state shared by all shards (read-only after start).
pub struct ChatShared {
    pub auth: Authenticator,
    pub store: Option<StoreHandle>,
    pub guest: bool,
    pub node_id: String,
    /// Rooms and read markers loaded from the store at start, handed to
    /// each shard once.
    pub preload: Mutex<Option<Arc<Preload>>>,
}

#[derive(Default)]
pub struct Preload {
    pub rooms: Vec<RoomState>,
    pub markers: Vec<crate::store::sqlite::ReadMarker>,
}

/// Per-connection chat state, boxed on the connection.
pub struct Session {
    pub identity: Identity,
    pub name_json: Arc<str>,
    pub exp: Option<u64>,
    rooms: Vec<Joined>,
    bucket: TokenBucket,
    bad_frames: u32,
    bad_window_start: u64,
}

impl Session {
    fn joined(&self, room: &str) -> Option<&Joined> {
        self.rooms.iter().find(|j| &*j.room == room)
    }

    fn joined_mut(&mut self, room: &str) -> Option<&mut Joined> {
        self.rooms.iter_mut().find(|j| &*j.room == room)
    }
}

struct Joined {
    room: Arc<str>,
    state: JoinState,
    /// DM rooms: highest seq delivered, to drop the second copy of a message
    /// that arrives both by replay and by the user's DM route.
    floor: u64,
    /// DM frames that arrived while the join was pending.
    held: Vec<(u64, Bytes)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JoinState {
    /// Waiting for the home shard's JoinDone.
    Pending,
    /// Live member at this index of the local member list.
    Member(u32),
    /// A joined DM room: live frames come by the user's route.
    Dm,
}

/// A message frame kept in a room's ring.
struct RingEntry {
    seq: u64,
    /// Server time of the message (ms), for age retention.
    ts: u64,
    frame: Bytes,
    /// Length of the WebSocket header in `frame`.
    hdr: usize,
}

impl RingEntry {
    /// The message as a history item: the JSON without `"type":"message",`.
    fn history_item(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        out.extend_from_slice(&self.frame[self.hdr + protocol::MESSAGE_PREFIX_LEN..]);
    }
}

/// A message numbered by its home but not yet committed by the store.
struct Pending {
    entry: RingEntry,
    reply: ReplyTo,
    id: ReqId,
    received: Instant,
}

struct Presence {
    name_json: Arc<str>,
    conns: u32,
}

/// A room as its home shard sees it.
struct HomeRoom {
    epoch: Arc<str>,
    next_seq: u64,
    committed: u64,
    ring: VecDeque<RingEntry>,
    /// Member connections per shard (non-DM rooms: where to fan out).
    shard_members: Vec<u32>,
    users: HashMap<Arc<str>, Presence>,
    read: HashMap<Arc<str>, u64>,
    pending: VecDeque<Pending>,
    /// Joins waiting for a store replay (value: the connection is already
    /// counted as a member, a second join); a leave cancels one.
    waiting: HashMap<ConnRef, bool>,
    dm: Option<(Arc<str>, Arc<str>)>,
}

impl HomeRoom {
    fn first_in_ring(&self) -> u64 {
        self.ring.front().map_or(self.committed + 1, |e| e.seq)
    }

    /// Forgets ring entries older than `cutoff_ts`: what age retention
    /// deletes from the store must not live on in memory (nor be replayed).
    fn expire_ring(&mut self, cutoff_ts: u64) {
        while self.ring.front().is_some_and(|e| e.ts < cutoff_ts) {
            self.ring.pop_front();
        }
    }
}

#[derive(Default)]
struct UserHome {
    /// Connections of the user per shard.
    shards: SmallVec<[(u32, u32); 1]>,
    /// The user's `rooms` list, sorted. A sorted Vec, not a BTreeSet: a
    /// B-tree leaf costs ~200 bytes even for one room, for every user.
    rooms: Vec<Arc<str>>,
}

impl UserHome {
    /// Adds a room; false if it was listed already.
    fn list(&mut self, room: Arc<str>) -> bool {
        match self.rooms.binary_search(&room) {
            Ok(_) => false,
            Err(i) => {
                reserve_small(&mut self.rooms);
                self.rooms.insert(i, room);
                true
            }
        }
    }

    /// Removes a room; false if it was not listed.
    fn unlist(&mut self, room: &Arc<str>) -> bool {
        match self.rooms.binary_search(room) {
            Ok(i) => {
                self.rooms.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

fn push_small<T>(v: &mut Vec<T>, item: T) {
    reserve_small(v);
    v.push(item);
}

/// Grows a per-connection or per-user Vec one slot at a time while it is
/// small: most hold one or two items, and the default first growth (four
/// slots) is what an idle connection would otherwise pay for.
fn reserve_small<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(if v.len() < 4 { 1 } else { v.len() });
    }
}

struct Gather {
    conn: ConnRef,
    id: ReqId,
    remaining: usize,
    entries: Vec<(Arc<str>, u64, u64)>,
}

/// A store range read in flight and what it is for.
enum StoreOp {
    JoinReplay {
        room: Arc<str>,
        join: JoinRequest,
        /// Replay gathered so far (seq, frame).
        got: Vec<(u64, Bytes)>,
        /// Highest seq covered so far (replay starts after `since`).
        upto: u64,
        recovered: Option<bool>,
    },
    History {
        room: Arc<str>,
        reply: ReplyTo,
        id: ReqId,
    },
}

struct JoinRequest {
    conn: ConnRef,
    user: Arc<str>,
    name_json: Arc<str>,
    since: u64,
    id: ReqId,
    rejoin: bool,
}

pub struct ChatShard {
    shard: usize,
    shards: usize,
    /// Ring size: `--history-ring`, but never more than retention keeps.
    ring_cap: usize,
    /// `--retention-age` in ms: older ring entries are dropped.
    retention_age_ms: Option<u64>,
    /// Room -> local member connection keys (member role).
    local: HashMap<Arc<str>, Vec<usize>>,
    /// User -> local connection keys (for DMs).
    /// Inline for up to two connections: no allocation for most users.
    users_here: HashMap<Arc<str>, SmallVec<[usize; 2]>>,
    /// Rooms homed here (home role).
    homes: HashMap<Arc<str>, HomeRoom>,
    /// Users homed here (user-home role).
    user_homes: HashMap<Arc<str>, UserHome>,
    gathers: HashMap<u64, Gather>,
    store_ops: HashMap<u64, StoreOp>,
    append_batches: HashMap<u64, Vec<(Arc<str>, u64)>>,
    next_op: u64,
    turn_appends: Vec<StoredMessage>,
    turn_keys: Vec<(Arc<str>, u64)>,
    turn_epochs: Vec<(String, String)>,
    /// Store completions for this shard. Unbounded on purpose: each one
    /// answers a request this shard made, and those are bounded by the
    /// store's own bounded queue, so this cannot grow without limit; a
    /// bounded channel here could deadlock the store thread.
    completions_tx: Sender<BusMsg>,
    completions_rx: Receiver<BusMsg>,
    latency: hdrhistogram::Histogram<u64>,
    last_export_ms: u64,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_epoch() -> Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}

/// A text frame from a JSON payload.
fn json_frame(payload: &[u8]) -> Bytes {
    ws::frame(ws::OpCode::Text, payload)
}

fn error_frame(id: &ReqId, e: &ProtoError) -> Bytes {
    json_frame(&protocol::error_json(
        id,
        e.code,
        &e.message,
        e.retry_after_ms,
    ))
}

impl ChatShard {
    pub fn new(shard: usize, shared: &Shared) -> Self {
        // Bounded by construction, not by capacity: each completion answers
        // one request that got into the store's bounded queue, and the shard
        // drains them every turn before it submits more. A bounded channel
        // would preallocate that many slots per shard for nothing.
        let (completions_tx, completions_rx) = crossbeam_channel::unbounded();
        let shards = shared.links.len();
        let mut chat = ChatShard {
            shard,
            shards,
            ring_cap: shared
                .cfg
                .history_ring
                .min(
                    shared
                        .cfg
                        .retention_messages
                        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                )
                .max(1),
            retention_age_ms: shared
                .cfg
                .retention_age
                .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
            local: HashMap::new(),
            users_here: HashMap::new(),
            homes: HashMap::new(),
            user_homes: HashMap::new(),
            gathers: HashMap::new(),
            store_ops: HashMap::new(),
            append_batches: HashMap::new(),
            next_op: 1,
            turn_appends: Vec::new(),
            turn_keys: Vec::new(),
            turn_epochs: Vec::new(),
            completions_tx,
            completions_rx,
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("static histogram bounds are valid"),
            last_export_ms: 0,
        };
        let preload = shared.chat.as_ref().and_then(|c| c.preload.lock().clone());
        if let Some(preload) = preload {
            chat.apply_preload(&preload);
        }
        chat
    }

    /// Takes this shard's part of what the store had on disk.
    fn apply_preload(&mut self, preload: &Preload) {
        for r in &preload.rooms {
            let dm = protocol::dm_participants(&r.room).map(|(x, y)| (Arc::from(x), Arc::from(y)));
            if let Some((x, y)) = &dm {
                for u in [x, y] {
                    if home_of(u, self.shards) == self.shard {
                        self.user_homes
                            .entry(u.clone())
                            .or_default()
                            .list(Arc::from(r.room.as_str()));
                    }
                }
            }
            if home_of(&r.room, self.shards) != self.shard {
                continue;
            }
            let room = self.new_home_room(Arc::from(r.room.as_str()), r.epoch.as_str().into());
            room.next_seq = r.last_seq + 1;
            room.committed = r.last_seq;
        }
        for (user, room, seq, listed) in &preload.markers {
            let user: Arc<str> = Arc::from(user.as_str());
            let room: Arc<str> = Arc::from(room.as_str());
            if *listed && home_of(&user, self.shards) == self.shard {
                self.user_homes
                    .entry(user.clone())
                    .or_default()
                    .list(room.clone());
            }
            if home_of(&room, self.shards) == self.shard {
                if let Some(home) = self.homes.get_mut(&room) {
                    home.read.insert(user, *seq);
                }
            }
        }
    }

    fn new_home_room(&mut self, name: Arc<str>, epoch: Arc<str>) -> &mut HomeRoom {
        let dm = protocol::dm_participants(&name).map(|(x, y)| (Arc::from(x), Arc::from(y)));
        self.homes.entry(name).or_insert_with(|| HomeRoom {
            epoch,
            next_seq: 1,
            committed: 0,
            ring: VecDeque::new(),
            shard_members: vec![0; 0],
            users: HashMap::new(),
            read: HashMap::new(),
            pending: VecDeque::new(),
            waiting: HashMap::new(),
            dm,
        })
    }

    fn store(core: &Core) -> Option<&StoreHandle> {
        core.shared.chat.as_ref().and_then(|c| c.store.as_ref())
    }

    fn chat_shared(core: &Core) -> &ChatShared {
        core.shared
            .chat
            .as_ref()
            .expect("chat shards always have chat state")
    }

    /// Whether the backends behind `/ready` are up (the store, when used).
    pub fn backends_ready(&self, core: &Core) -> bool {
        Self::store(core).is_none_or(|s| s.is_available())
    }

    // ------------------------------------------------------------------
    // Connection life

    /// Verifies the upgrade's token; the error text goes into the 401 body.
    pub fn authenticate(&mut self, core: &Core, req: &HttpRequest) -> Result<Box<Session>, String> {
        let token = req
            .query_param("token")
            .or_else(|| req.bearer().map(str::to_string))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| "missing token".to_string())?;
        let chat = Self::chat_shared(core);
        let identity = chat
            .auth
            .verify(&token, crate::auth::now_secs())
            .map_err(|e| e.to_string())?;
        let name_json: Arc<str> = serde_json::to_string(&*identity.name)
            .unwrap_or_else(|_| "\"\"".into())
            .into();
        Ok(Box::new(Session {
            exp: identity.exp,
            identity,
            name_json,
            rooms: Vec::new(),
            bucket: TokenBucket::new(core.shared.cfg.burst, core.now_ms),
            bad_frames: 0,
            bad_window_start: core.now_ms,
        }))
    }

    /// The WebSocket is open: say welcome, and tell the user's home.
    pub fn on_open(&mut self, core: &mut Core, key: usize) {
        let cfg = core.shared.cfg.clone();
        let node = &Self::chat_shared(core).node_id;
        let conn_id = core.conns[key].id;
        let Some(session) = core.conns[key].session.as_ref() else {
            return;
        };
        let user = session.identity.user.clone();
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"type\":\"welcome\",\"user\":\"");
        out.extend_from_slice(user.as_bytes());
        out.extend_from_slice(b"\",\"name\":");
        out.extend_from_slice(session.name_json.as_bytes());
        let _ = write!(
            out,
            ",\"session\":\"{node}-{}-{conn_id}\",\"node\":\"{node}\",\"heartbeat_ms\":{},\"limits\":{{\"max_frame_bytes\":{},\"max_body_bytes\":{},\"rate_per_sec\":{},\"burst\":{}}}}}",
            self.shard,
            cfg.heartbeat_ms,
            cfg.max_frame_bytes,
            cfg.max_body_bytes,
            cfg.rate_per_sec,
            cfg.burst
        );
        core.send(key, json_frame(&out));
        let keys = self.users_here.entry(user.clone()).or_default();
        keys.push(key);
        if keys.len() == 1 {
            let home = home_of(&user, self.shards);
            core.bus(
                home,
                BusMsg::UserOnline {
                    user,
                    shard: self.shard as u32,
                },
            );
        }
    }

    /// The connection is gone: leave its rooms, tell the user's home.
    pub fn on_disconnect(&mut self, core: &mut Core, key: usize, conn_id: u64, session: Session) {
        let conn = ConnRef {
            shard: self.shard as u32,
            key: key as u32,
            id: conn_id,
        };
        let user = session.identity.user.clone();
        for joined in &session.rooms {
            if let JoinState::Member(pos) = joined.state {
                self.remove_member(core, &joined.room, pos);
            }
            let home = home_of(&joined.room, self.shards);
            core.bus(
                home,
                BusMsg::Leave {
                    room: joined.room.clone(),
                    conn,
                    user: user.clone(),
                    explicit: false,
                },
            );
        }
        if let Some(keys) = self.users_here.get_mut(&user) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.users_here.remove(&user);
                core.bus(
                    home_of(&user, self.shards),
                    BusMsg::UserOffline {
                        user,
                        shard: self.shard as u32,
                    },
                );
            }
        }
    }

    /// Removes the member at `pos` of a local room list; the member moved
    /// into its place gets its index updated.
    fn remove_member(&mut self, core: &mut Core, room: &Arc<str>, pos: u32) {
        let Some(members) = self.local.get_mut(room) else {
            return;
        };
        let pos = pos as usize;
        if pos >= members.len() {
            return;
        }
        members.swap_remove(pos);
        if let Some(&moved) = members.get(pos) {
            if let Some(j) = core
                .conns
                .get_mut(moved)
                .and_then(|c| c.session.as_mut())
                .and_then(|s| s.joined_mut(room))
            {
                j.state = JoinState::Member(pos as u32);
            }
        }
        if members.is_empty() {
            self.local.remove(room);
        }
    }

    // ------------------------------------------------------------------
    // Client requests

    pub fn on_text(&mut self, core: &mut Core, key: usize, text: &str) {
        let max_body = core.shared.cfg.max_body_bytes;
        let (id, parsed) = protocol::parse_request(text, max_body);
        let req = match parsed {
            Ok(req) => req,
            Err(e) => {
                if e.unparsable && self.count_bad_frame(core, key) {
                    core.close_ws_as(
                        key,
                        close_code::POLICY,
                        "too many invalid frames",
                        metrics::DisconnectReason::Abuse,
                    );
                    return;
                }
                self.reply_error(core, key, &id, &e);
                return;
            }
        };
        if let Err(e) = self.handle(core, key, &id, req) {
            self.reply_error(core, key, &id, &e);
        }
    }

    /// Counts an unparsable frame; true when the connection must close.
    fn count_bad_frame(&mut self, core: &mut Core, key: usize) -> bool {
        let limit = core.shared.cfg.max_parse_errors;
        let now = core.now_ms;
        let Some(s) = core.conns[key].session.as_mut() else {
            return false;
        };
        if now.saturating_sub(s.bad_window_start) > BAD_FRAME_WINDOW_MS {
            s.bad_window_start = now;
            s.bad_frames = 0;
        }
        s.bad_frames += 1;
        s.bad_frames > limit
    }

    fn reply_error(&mut self, core: &mut Core, key: usize, id: &ReqId, e: &ProtoError) {
        metrics::inc(&core.metrics.errors_sent);
        core.send(key, error_frame(id, e));
    }

    /// Applies the token bucket; Err carries the reply, or None after the
    /// connection was closed for abuse.
    fn rate_limit(&mut self, core: &mut Core, key: usize) -> Result<(), Option<ProtoError>> {
        let (rate, burst, now) = (
            core.shared.cfg.rate_per_sec,
            core.shared.cfg.burst,
            core.now_ms,
        );
        let Some(s) = core.conns[key].session.as_mut() else {
            return Err(None);
        };
        match s.bucket.admit(rate, burst, now) {
            Admit::Yes => Ok(()),
            Admit::No { retry_after_ms } => {
                metrics::inc(&core.metrics.rate_limited);
                Err(Some(ProtoError::rate_limited(retry_after_ms)))
            }
            Admit::Abuse => {
                metrics::inc(&core.metrics.rate_limited);
                core.close_ws_as(
                    key,
                    close_code::POLICY,
                    "rate limit exceeded repeatedly",
                    metrics::DisconnectReason::Abuse,
                );
                Err(None)
            }
        }
    }

    fn handle(
        &mut self,
        core: &mut Core,
        key: usize,
        id: &ReqId,
        req: Request<'_>,
    ) -> Result<(), ProtoError> {
        let conn = core.conn_ref(key);
        let session = core.conns[key]
            .session
            .as_ref()
            .ok_or_else(|| ProtoError::new(ErrorCode::Internal, "no session"))?;
        let user = session.identity.user.clone();
        let name_json = session.name_json.clone();
        match req {
            Request::Ping => {
                let mut out = b"{\"type\":\"pong\"".to_vec();
                if let Some(id) = id {
                    out.extend_from_slice(b",\"id\":");
                    out.extend_from_slice(id.as_bytes());
                }
                out.push(b'}');
                core.send(key, json_frame(&out));
            }
            Request::Join { room, since } => {
                if !session.identity.may_access(room) {
                    return Err(ProtoError::new(
                        ErrorCode::Forbidden,
                        "you may not join this room",
                    ));
                }
                let room: Arc<str> = Arc::from(room);
                let mut rejoin = false;
                if let Some(j) = session.joined(&room) {
                    match j.state {
                        JoinState::Pending => {
                            return Err(ProtoError::new(
                                ErrorCode::BadRequest,
                                "join already in progress",
                            ))
                        }
                        JoinState::Member(pos) => {
                            // A second join replays again: stop live frames
                            // until the new JoinDone, which brings the replay.
                            self.remove_member(core, &room, pos);
                            rejoin = true;
                        }
                        JoinState::Dm => rejoin = true,
                    }
                }
                let s = core.conns[key].session.as_mut().expect("checked above");
                match s.joined_mut(&room) {
                    Some(j) => j.state = JoinState::Pending,
                    None => push_small(
                        &mut s.rooms,
                        Joined {
                            room: room.clone(),
                            state: JoinState::Pending,
                            floor: 0,
                            held: Vec::new(),
                        },
                    ),
                }
                core.bus(
                    home_of(&room, self.shards),
                    BusMsg::Join {
                        room,
                        conn,
                        user,
                        name_json,
                        since,
                        id: id.clone(),
                        rejoin,
                    },
                );
            }
            Request::Leave { room } => {
                let Some(j) = session.joined(room) else {
                    return Err(ProtoError::new(
                        ErrorCode::NotJoined,
                        "not joined to this room",
                    ));
                };
                let state = j.state;
                let room = j.room.clone();
                if let JoinState::Member(pos) = state {
                    self.remove_member(core, &room, pos);
                }
                if let Some(s) = core.conns[key].session.as_mut() {
                    s.rooms.retain(|j| j.room != room);
                }
                let mut out = b"{\"type\":\"left\",".to_vec();
                protocol::write_id(&mut out, id);
                out.extend_from_slice(b"\"room\":\"");
                out.extend_from_slice(room.as_bytes());
                out.extend_from_slice(b"\"}");
                core.send(key, json_frame(&out));
                core.bus(
                    home_of(&room, self.shards),
                    BusMsg::Leave {
                        room,
                        conn,
                        user,
                        explicit: true,
                    },
                );
            }
            Request::Publish { room, body } => {
                if session.joined(room).is_none() {
                    return Err(ProtoError::new(
                        ErrorCode::NotJoined,
                        "join the room before publishing",
                    ));
                }
                if room.starts_with("dm:") {
                    return Err(ProtoError::new(
                        ErrorCode::Forbidden,
                        "use dm to write to a direct conversation",
                    ));
                }
                self.rate_limit(core, key)
                    .map_err(|e| e.unwrap_or_else(silent))?;
                let room: Arc<str> = Arc::from(room);
                core.bus(
                    home_of(&room, self.shards),
                    BusMsg::Publish {
                        room,
                        reply: ReplyTo::Ws(conn),
                        user,
                        name_json,
                        body: body.into(),
                        id: id.clone(),
                        received: Instant::now(),
                    },
                );
            }
            Request::Dm { to, body } => {
                if *to == *user {
                    return Err(ProtoError::new(
                        ErrorCode::BadRequest,
                        "cannot send a dm to yourself",
                    ));
                }
                self.rate_limit(core, key)
                    .map_err(|e| e.unwrap_or_else(silent))?;
                let room: Arc<str> = protocol::dm_room(&user, to).into();
                core.bus(
                    home_of(&room, self.shards),
                    BusMsg::Publish {
                        room,
                        reply: ReplyTo::Ws(conn),
                        user,
                        name_json,
                        body: body.into(),
                        id: id.clone(),
                        received: Instant::now(),
                    },
                );
            }
            Request::History {
                room,
                before,
                after,
                limit,
            } => {
                if !session.identity.may_access(room) {
                    return Err(ProtoError::new(
                        ErrorCode::Forbidden,
                        "you may not read this room",
                    ));
                }
                let room: Arc<str> = Arc::from(room);
                core.bus(
                    home_of(&room, self.shards),
                    BusMsg::History {
                        room,
                        reply: ReplyTo::Ws(conn),
                        before,
                        after,
                        limit,
                        id: id.clone(),
                    },
                );
            }
            Request::Rooms => {
                core.bus(
                    home_of(&user, self.shards),
                    BusMsg::RoomsRequest {
                        user,
                        conn,
                        id: id.clone(),
                    },
                );
            }
            Request::Presence { room } => {
                if session.joined(room).is_none() {
                    return Err(ProtoError::new(
                        ErrorCode::NotJoined,
                        "not joined to this room",
                    ));
                }
                let room: Arc<str> = Arc::from(room);
                core.bus(
                    home_of(&room, self.shards),
                    BusMsg::Presence {
                        room,
                        conn,
                        id: id.clone(),
                    },
                );
            }
            Request::Typing { room } => {
                if session.joined(room).is_none() {
                    return Err(ProtoError::new(
                        ErrorCode::NotJoined,
                        "not joined to this room",
                    ));
                }
                self.rate_limit(core, key)
                    .map_err(|e| e.unwrap_or_else(silent))?;
                let room: Arc<str> = Arc::from(room);
                core.bus(home_of(&room, self.shards), BusMsg::Typing { room, user });
            }
            Request::Read { room, seq } => {
                if session.joined(room).is_none() {
                    return Err(ProtoError::new(
                        ErrorCode::NotJoined,
                        "not joined to this room",
                    ));
                }
                let room: Arc<str> = Arc::from(room);
                core.bus(
                    home_of(&room, self.shards),
                    BusMsg::Read { room, user, seq },
                );
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Bus

    pub fn on_bus(&mut self, core: &mut Core, msg: BusMsg) {
        match msg {
            BusMsg::Join {
                room,
                conn,
                user,
                name_json,
                since,
                id,
                rejoin,
            } => {
                let join = JoinRequest {
                    conn,
                    user,
                    name_json,
                    since: since.unwrap_or(u64::MAX),
                    id,
                    rejoin,
                };
                self.home_join(core, room, join);
            }
            BusMsg::Leave {
                room,
                conn,
                user,
                explicit,
            } => self.home_leave(core, &room, conn, &user, explicit),
            BusMsg::Publish {
                room,
                reply,
                user,
                name_json,
                body,
                id,
                received,
            } => self.home_publish(core, room, reply, &user, &name_json, &body, id, received),
            BusMsg::History {
                room,
                reply,
                before,
                after,
                limit,
                id,
            } => self.home_history(
                core,
                room,
                reply,
                RangeQuery {
                    after,
                    before,
                    limit,
                },
                id,
            ),
            BusMsg::Presence { room, conn, id } => self.home_presence(core, &room, conn, &id),
            BusMsg::Typing { room, user } => {
                let mut out = b"{\"type\":\"typing\",\"room\":\"".to_vec();
                out.extend_from_slice(room.as_bytes());
                out.extend_from_slice(b"\",\"from\":\"");
                out.extend_from_slice(user.as_bytes());
                out.extend_from_slice(b"\"}");
                self.broadcast(core, &room, json_frame(&out), Some(user));
            }
            BusMsg::Read { room, user, seq } => self.home_read(core, room, user, seq),
            BusMsg::RoomInfo {
                gather,
                reply_shard,
                user,
                rooms,
            } => {
                let entries = rooms
                    .into_iter()
                    .map(|r| {
                        let (seq, read) = self.homes.get(&r).map_or((0, 0), |h| {
                            (h.committed, h.read.get(&user).copied().unwrap_or(0))
                        });
                        (r, seq, read)
                    })
                    .collect();
                core.bus(
                    reply_shard as usize,
                    BusMsg::RoomInfoReply { gather, entries },
                );
            }
            BusMsg::Appended { batch, results } => self.on_appended(core, batch, results),
            BusMsg::Ranged { op, result } => self.on_ranged(core, op, result),
            BusMsg::JoinDone {
                room,
                conn,
                frames,
                last_seq,
                accepted,
            } => self.member_join_done(core, room, conn, frames, last_seq, accepted),
            BusMsg::RoomFrame {
                room,
                frame,
                except_user,
                received,
            } => self.member_room_frame(core, &room, frame, except_user.as_deref(), received),
            BusMsg::UserFrame {
                user,
                room,
                seq,
                frame,
                received,
            } => self.member_user_frame(core, &user, &room, seq, frame, received),
            BusMsg::ToConn { conn, frame } => {
                if let Some(key) = core.resolve(conn) {
                    core.send(key, frame);
                }
            }
            BusMsg::HttpReply { conn, status, body } => {
                if let Some(key) = core.resolve(conn) {
                    core.respond_http(key, Response::json(status, body));
                }
            }
            BusMsg::UserOnline { user, shard } => {
                let home = self.user_homes.entry(user).or_default();
                match home.shards.iter_mut().find(|(s, _)| *s == shard) {
                    Some((_, n)) => *n += 1,
                    None => home.shards.push((shard, 1)),
                }
            }
            BusMsg::UserOffline { user, shard } => {
                if let Some(home) = self.user_homes.get_mut(&user) {
                    if let Some(i) = home.shards.iter().position(|(s, _)| *s == shard) {
                        home.shards[i].1 -= 1;
                        if home.shards[i].1 == 0 {
                            home.shards.swap_remove(i);
                        }
                    }
                    if home.shards.is_empty() && home.rooms.is_empty() {
                        self.user_homes.remove(&user);
                    }
                }
            }
            BusMsg::Dm {
                user,
                room,
                seq,
                frame,
                received,
            } => {
                if let Some(home) = self.user_homes.get(&user) {
                    for &(shard, _) in &home.shards {
                        core.bus(
                            shard as usize,
                            BusMsg::UserFrame {
                                user: user.clone(),
                                room: room.clone(),
                                seq,
                                frame: frame.clone(),
                                received,
                            },
                        );
                    }
                }
            }
            BusMsg::UserRoom { user, room, member } => {
                let home = self.user_homes.entry(user.clone()).or_default();
                let changed = if member {
                    home.list(room.clone())
                } else {
                    home.unlist(&room)
                };
                // The user home is the one place that decides the list, so
                // it alone persists it: only changes reach the store.
                if changed {
                    if let Some(store) = Self::store(core) {
                        store.set_listed(user.to_string(), room.to_string(), member);
                    }
                }
            }
            BusMsg::RoomsRequest { user, conn, id } => self.user_rooms(core, user, conn, id),
            BusMsg::RoomInfoReply { gather, entries } => {
                let Some(g) = self.gathers.get_mut(&gather) else {
                    return;
                };
                g.entries.extend(entries);
                g.remaining -= 1;
                if g.remaining == 0 {
                    if let Some(g) = self.gathers.remove(&gather) {
                        self.send_rooms(core, g);
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Home role

    fn home_room(&mut self, room: &Arc<str>) -> &mut HomeRoom {
        if !self.homes.contains_key(room) {
            self.new_home_room(room.clone(), new_epoch());
        }
        let shards = self.shards;
        let home = self.homes.get_mut(room).expect("inserted above");
        if home.shard_members.len() != shards {
            home.shard_members.resize(shards, 0);
        }
        home
    }

    /// The home room about to be read (join replay, history): its ring first
    /// forgets what age retention dropped. Only readers pay for the clock.
    fn home_room_to_read(&mut self, room: &Arc<str>) -> &mut HomeRoom {
        let cutoff = self
            .retention_age_ms
            .map(|age| now_unix_ms().saturating_sub(age));
        let home = self.home_room(room);
        if let Some(cutoff) = cutoff {
            home.expire_ring(cutoff);
        }
        home
    }

    #[allow(clippy::too_many_arguments)]
    fn home_publish(
        &mut self,
        core: &mut Core,
        room_name: Arc<str>,
        reply: ReplyTo,
        user: &str,
        name_json: &str,
        body: &str,
        id: ReqId,
        received: Instant,
    ) {
        let store = Self::store(core).cloned();
        let ts = now_unix_ms();
        let room = self.home_room(&room_name);
        let seq = room.next_seq;
        room.next_seq += 1;
        let fields = MessageFields {
            room: &room_name,
            seq,
            from: user,
            name_json,
            ts,
            body,
        };
        let frame = ws::text_frame_with(128 + body.len() + name_json.len(), |out| {
            protocol::write_message(out, &fields)
        });
        let payload_len = frame.len();
        let hdr = ws::header_len(payload_len);
        // header_len was computed from the whole frame size; recompute from
        // the payload so the ring knows exactly where the JSON starts.
        let hdr = header_of(&frame).unwrap_or(hdr);
        let pending = Pending {
            entry: RingEntry {
                seq,
                ts,
                frame,
                hdr,
            },
            reply,
            id,
            received,
        };
        if store.is_some() {
            let epoch = room.epoch.to_string();
            room.pending.push_back(pending);
            self.turn_appends.push(StoredMessage {
                room: room_name.to_string(),
                seq,
                ts,
                from: user.to_string(),
                name: serde_json::from_str::<String>(name_json).unwrap_or_default(),
                body: body.to_string(),
            });
            self.turn_keys.push((room_name.clone(), seq));
            if !self.turn_epochs.iter().any(|(r, _)| **r == *room_name) {
                self.turn_epochs.push((room_name.to_string(), epoch));
            }
        } else {
            self.commit(core, &room_name, pending);
        }
    }

    /// The message is stored: it becomes part of the room, is fanned out
    /// once, and the publisher gets its ack.
    fn commit(&mut self, core: &mut Core, room_name: &Arc<str>, p: Pending) {
        let ring_cap = self.ring_cap;
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        room.committed = p.entry.seq;
        let frame = p.entry.frame.clone();
        let seq = p.entry.seq;
        let ts = p.entry.ts;
        room.ring.push_back(p.entry);
        while room.ring.len() > ring_cap {
            room.ring.pop_front();
        }
        let dm = room.dm.clone();
        metrics::inc(&core.metrics.publishes);
        if let Some((x, y)) = dm {
            for u in [x, y] {
                self.ensure_member_listing(core, room_name, &u);
                core.bus(
                    home_of(&u, self.shards),
                    BusMsg::Dm {
                        user: u,
                        room: room_name.clone(),
                        seq,
                        frame: frame.clone(),
                        received: p.received,
                    },
                );
            }
        } else {
            self.fan_out(core, room_name, frame, None, Some(p.received));
        }
        let mut ack = Vec::with_capacity(96);
        match p.reply {
            ReplyTo::Ws(conn) => {
                ack.extend_from_slice(b"{\"type\":\"ack\",");
                protocol::write_id(&mut ack, &p.id);
                ack.extend_from_slice(b"\"room\":\"");
                ack.extend_from_slice(room_name.as_bytes());
                let _ = write!(ack, "\",\"seq\":{seq},\"ts\":{ts}}}");
                core.bus(
                    conn.shard as usize,
                    BusMsg::ToConn {
                        conn,
                        frame: json_frame(&ack),
                    },
                );
            }
            ReplyTo::Http(conn) => {
                ack.extend_from_slice(b"{\"room\":\"");
                ack.extend_from_slice(room_name.as_bytes());
                let _ = write!(ack, "\",\"seq\":{seq},\"ts\":{ts}}}");
                core.bus(
                    conn.shard as usize,
                    BusMsg::HttpReply {
                        conn,
                        status: 200,
                        body: Bytes::from(ack),
                    },
                );
            }
        }
    }

    /// Lists a DM room under `rooms` for a participant the first time.
    fn ensure_member_listing(&mut self, core: &mut Core, room_name: &Arc<str>, user: &Arc<str>) {
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        if !room.read.contains_key(user) {
            room.read.insert(user.clone(), 0);
            core.bus(
                home_of(user, self.shards),
                BusMsg::UserRoom {
                    user: user.clone(),
                    room: room_name.clone(),
                    member: true,
                },
            );
        }
    }

    /// Sends a frame to every shard with members of a (non-DM) room.
    fn fan_out(
        &mut self,
        core: &mut Core,
        room_name: &Arc<str>,
        frame: Bytes,
        except_user: Option<Arc<str>>,
        received: Option<Instant>,
    ) {
        let Some(room) = self.homes.get(room_name) else {
            return;
        };
        for (shard, &n) in room.shard_members.iter().enumerate() {
            if n > 0 {
                core.bus(
                    shard,
                    BusMsg::RoomFrame {
                        room: room_name.clone(),
                        frame: frame.clone(),
                        except_user: except_user.clone(),
                        received,
                    },
                );
            }
        }
    }

    /// A non-message frame (presence, typing, read) to a room's members; DM
    /// rooms reach the participants by their user route.
    fn broadcast(
        &mut self,
        core: &mut Core,
        room_name: &Arc<str>,
        frame: Bytes,
        except_user: Option<Arc<str>>,
    ) {
        let Some(room) = self.homes.get(room_name) else {
            return;
        };
        if let Some((x, y)) = room.dm.clone() {
            for u in [x, y] {
                if except_user.as_deref() == Some(&*u) {
                    continue;
                }
                core.bus(
                    home_of(&u, self.shards),
                    BusMsg::Dm {
                        user: u,
                        room: room_name.clone(),
                        seq: 0,
                        frame: frame.clone(),
                        received: Instant::now(),
                    },
                );
            }
        } else {
            self.fan_out(core, room_name, frame, except_user, None);
        }
    }

    fn on_appended(
        &mut self,
        core: &mut Core,
        batch: u64,
        results: Vec<Result<(), crate::store::StoreError>>,
    ) {
        let Some(keys) = self.append_batches.remove(&batch) else {
            return;
        };
        for (i, (room_name, seq)) in keys.into_iter().enumerate() {
            let ok = results.get(i).is_some_and(|r| r.is_ok());
            let Some(room) = self.homes.get_mut(&room_name) else {
                continue;
            };
            // A room rolled back after an earlier failure no longer has this
            // message pending; its late result means nothing.
            if room.pending.front().map(|p| p.entry.seq) != Some(seq) {
                continue;
            }
            if ok {
                if let Some(p) = room.pending.pop_front() {
                    self.commit(core, &room_name, p);
                }
            } else {
                // Nothing after a failed message may be committed (no gaps):
                // fail every pending one and number again from `committed`.
                room.next_seq = room.committed + 1;
                let failed: Vec<Pending> = room.pending.drain(..).collect();
                for p in failed {
                    let e = ProtoError::new(
                        ErrorCode::Unavailable,
                        "the message store is unavailable; retry later",
                    );
                    self.reply_request_error(core, p.reply, &p.id, &e);
                }
            }
        }
    }

    fn reply_request_error(&mut self, core: &mut Core, reply: ReplyTo, id: &ReqId, e: &ProtoError) {
        match reply {
            ReplyTo::Ws(conn) => core.bus(
                conn.shard as usize,
                BusMsg::ToConn {
                    conn,
                    frame: error_frame(id, e),
                },
            ),
            ReplyTo::Http(conn) => {
                let body =
                    serde_json::json!({ "error": e.message, "code": e.code.as_str() }).to_string();
                core.bus(
                    conn.shard as usize,
                    BusMsg::HttpReply {
                        conn,
                        status: e.code.http_status(),
                        body: Bytes::from(body),
                    },
                )
            }
        }
    }

    fn home_join(&mut self, core: &mut Core, room_name: Arc<str>, join: JoinRequest) {
        let has_store = Self::store(core).is_some();
        let room = self.home_room_to_read(&room_name);
        let since = join.since;
        let recovered = since >= room.committed || since.saturating_add(1) >= room.first_in_ring();
        if recovered || !has_store {
            let replay: Vec<(u64, Bytes)> = room
                .ring
                .iter()
                .filter(|e| e.seq > since)
                .map(|e| (e.seq, e.frame.clone()))
                .collect();
            self.join_take_effect(core, &room_name, join, replay, recovered);
            return;
        }
        // Older than the ring: read the store first; the join takes effect
        // when the replay has caught up with the ring.
        room.waiting.insert(join.conn, join.rejoin);
        let before = room.first_in_ring();
        let op = StoreOp::JoinReplay {
            room: room_name.clone(),
            upto: since,
            got: Vec::new(),
            recovered: None,
            join,
        };
        self.start_range(
            core,
            &room_name,
            RangeQuery {
                after: Some(since),
                before: Some(before),
                limit: REPLAY_PAGE,
            },
            op,
        );
    }

    fn start_range(&mut self, core: &mut Core, room: &str, q: RangeQuery, op: StoreOp) {
        let Some(store) = Self::store(core).cloned() else {
            return;
        };
        let op_id = self.next_op;
        self.next_op += 1;
        self.store_ops.insert(op_id, op);
        let tx = self.completions_tx.clone();
        let waker = core.shared.links[self.shard].waker.clone();
        store.range(
            room.to_string(),
            q,
            Box::new(move |result| {
                if tx.send(BusMsg::Ranged { op: op_id, result }).is_ok() {
                    let _ = waker.wake();
                }
            }),
        );
    }

    fn on_ranged(
        &mut self,
        core: &mut Core,
        op_id: u64,
        result: Result<(Vec<StoredMessage>, bool), crate::store::StoreError>,
    ) {
        let Some(op) = self.store_ops.remove(&op_id) else {
            return;
        };
        match op {
            StoreOp::History { room, reply, id } => match result {
                Ok((msgs, has_more)) => {
                    let items: Vec<Vec<u8>> = msgs.iter().map(stored_history_item).collect();
                    self.send_history(core, &room, reply, &id, items, has_more);
                }
                Err(e) => {
                    tracing::warn!("history read failed: {e}");
                    let e = ProtoError::new(
                        ErrorCode::Unavailable,
                        "the message store is unavailable; retry later",
                    );
                    self.reply_request_error(core, reply, &id, &e);
                }
            },
            StoreOp::JoinReplay {
                room,
                join,
                mut got,
                mut upto,
                mut recovered,
            } => {
                let Some(home) = self.homes.get_mut(&room) else {
                    return;
                };
                if !home.waiting.contains_key(&join.conn) {
                    return; // left meanwhile
                }
                let (msgs, has_more) = match result {
                    Ok(r) => r,
                    Err(e) => {
                        home.waiting.remove(&join.conn);
                        tracing::warn!("replay read failed: {e}");
                        let err = ProtoError::new(
                            ErrorCode::Unavailable,
                            "the message store is unavailable; retry later",
                        );
                        core.bus(
                            join.conn.shard as usize,
                            BusMsg::JoinDone {
                                room,
                                conn: join.conn,
                                frames: vec![error_frame(&join.id, &err)],
                                last_seq: 0,
                                accepted: false,
                            },
                        );
                        return;
                    }
                };
                if recovered.is_none() {
                    recovered = Some(msgs.first().is_some_and(|m| m.seq == upto + 1));
                }
                for m in &msgs {
                    got.push((m.seq, stored_message_frame(m)));
                    upto = m.seq;
                }
                let ring_first = home.first_in_ring();
                if has_more || upto + 1 < ring_first {
                    if msgs.is_empty() && !has_more {
                        // The store has nothing more below the ring: what is
                        // missing was dropped by retention.
                        recovered = Some(false);
                        upto = ring_first - 1;
                    } else {
                        let op = StoreOp::JoinReplay {
                            room: room.clone(),
                            join,
                            got,
                            upto,
                            recovered,
                        };
                        self.start_range(
                            core,
                            &room,
                            RangeQuery {
                                after: Some(upto),
                                before: Some(ring_first),
                                limit: REPLAY_PAGE,
                            },
                            op,
                        );
                        return;
                    }
                }
                home.waiting.remove(&join.conn);
                got.extend(
                    home.ring
                        .iter()
                        .filter(|e| e.seq > upto)
                        .map(|e| (e.seq, e.frame.clone())),
                );
                self.join_take_effect(core, &room, join, got, recovered.unwrap_or(false));
            }
        }
    }

    /// The join counts from now: register the member, announce the user,
    /// and send `joined` + replay on the same channel the live frames use.
    fn join_take_effect(
        &mut self,
        core: &mut Core,
        room_name: &Arc<str>,
        join: JoinRequest,
        replay: Vec<(u64, Bytes)>,
        recovered: bool,
    ) {
        let shards = self.shards;
        let room = self.home_room(room_name);
        let mut announce = None;
        if !join.rejoin {
            if room.dm.is_none() {
                room.shard_members[join.conn.shard as usize] += 1;
            }
            let p = room.users.entry(join.user.clone()).or_insert(Presence {
                name_json: join.name_json.clone(),
                conns: 0,
            });
            p.conns += 1;
            if p.conns == 1 {
                let mut out = b"{\"type\":\"user_joined\",\"room\":\"".to_vec();
                out.extend_from_slice(room_name.as_bytes());
                out.extend_from_slice(b"\",\"user\":\"");
                out.extend_from_slice(join.user.as_bytes());
                out.extend_from_slice(b"\",\"name\":");
                out.extend_from_slice(join.name_json.as_bytes());
                out.push(b'}');
                announce = Some(json_frame(&out));
            }
        }
        let read = room.read.get(&join.user).copied();
        if read.is_none() {
            room.read.insert(join.user.clone(), 0);
        }
        let mut joined = b"{\"type\":\"joined\",".to_vec();
        protocol::write_id(&mut joined, &join.id);
        joined.extend_from_slice(b"\"room\":\"");
        joined.extend_from_slice(room_name.as_bytes());
        let _ = write!(
            joined,
            "\",\"seq\":{},\"epoch\":\"{}\",\"members\":{},\"read\":{},\"recovered\":{}}}",
            room.committed,
            room.epoch,
            room.users.len(),
            read.unwrap_or(0),
            recovered
        );
        let last_seq = room.committed;
        let mut frames = Vec::with_capacity(1 + replay.len());
        frames.push(json_frame(&joined));
        frames.extend(replay.into_iter().map(|(_, f)| f));
        core.bus(
            join.conn.shard as usize,
            BusMsg::JoinDone {
                room: room_name.clone(),
                conn: join.conn,
                frames,
                last_seq,
                accepted: true,
            },
        );
        core.bus(
            home_of(&join.user, shards),
            BusMsg::UserRoom {
                user: join.user.clone(),
                room: room_name.clone(),
                member: true,
            },
        );
        if let Some(frame) = announce {
            self.broadcast(core, room_name, frame, Some(join.user));
        }
    }

    fn home_leave(
        &mut self,
        core: &mut Core,
        room_name: &Arc<str>,
        conn: ConnRef,
        user: &Arc<str>,
        explicit: bool,
    ) {
        let shards = self.shards;
        let Some(room) = self.homes.get_mut(room_name) else {
            return;
        };
        // Some(false): the join never took effect and the connection was not
        // counted. Some(true): a second join was pending; the first counts.
        if let Some(false) = room.waiting.remove(&conn) {
            return;
        }
        if room.dm.is_none() {
            if let Some(n) = room.shard_members.get_mut(conn.shard as usize) {
                *n = n.saturating_sub(1);
            }
        }
        let Some(p) = room.users.get_mut(user) else {
            return;
        };
        p.conns -= 1;
        if p.conns > 0 {
            return;
        }
        room.users.remove(user);
        // A DM room stays listed under `rooms` for its participants.
        let unlist = explicit && room.dm.is_none();
        let mut out = b"{\"type\":\"user_left\",\"room\":\"".to_vec();
        out.extend_from_slice(room_name.as_bytes());
        out.extend_from_slice(b"\",\"user\":\"");
        out.extend_from_slice(user.as_bytes());
        out.extend_from_slice(b"\"}");
        self.broadcast(core, room_name, json_frame(&out), Some(user.clone()));
        if unlist {
            core.bus(
                home_of(user, shards),
                BusMsg::UserRoom {
                    user: user.clone(),
                    room: room_name.clone(),
                    member: false,
                },
            );
        }
    }

    fn home_history(
        &mut self,
        core: &mut Core,
        room_name: Arc<str>,
        reply: ReplyTo,
        q: RangeQuery,
        id: ReqId,
    ) {
        let has_store = Self::store(core).is_some();
        let room = self.home_room_to_read(&room_name);
        let first = room.first_in_ring();
        let committed = room.committed;
        // Range the query wants, as [lo, hi] inclusive, and which end to keep.
        let hi = q
            .before
            .map_or(committed, |b| b.saturating_sub(1).min(committed));
        let from_start = q.after.is_some();
        let lo_needed = match q.after {
            Some(a) => a.saturating_add(1),
            None => hi.saturating_sub(q.limit as u64 - 1).max(1),
        };
        if has_store && lo_needed < first && hi >= lo_needed {
            self.start_range_history(core, room_name, reply, id, q);
            return;
        }
        let mut items: Vec<&RingEntry> = room
            .ring
            .iter()
            .filter(|e| e.seq <= hi && q.after.is_none_or(|a| e.seq > a))
            .collect();
        let has_more = if from_start {
            let more = items.len() > q.limit;
            items.truncate(q.limit);
            more
        } else {
            let more =
                items.len() > q.limit || items.first().is_some_and(|e| e.seq > 1 && has_store);
            let skip = items.len().saturating_sub(q.limit);
            items.drain(..skip);
            more || (skip > 0)
        };
        let encoded: Vec<Vec<u8>> = items
            .iter()
            .map(|e| {
                let mut v = Vec::with_capacity(e.frame.len());
                e.history_item(&mut v);
                v
            })
            .collect();
        self.send_history(core, &room_name, reply, &id, encoded, has_more);
    }

    fn start_range_history(
        &mut self,
        core: &mut Core,
        room: Arc<str>,
        reply: ReplyTo,
        id: ReqId,
        q: RangeQuery,
    ) {
        let op = StoreOp::History {
            room: room.clone(),
            reply,
            id,
        };
        self.start_range(core, &room, q, op);
    }

    fn send_history(
        &mut self,
        core: &mut Core,
        room: &str,
        reply: ReplyTo,
        id: &ReqId,
        items: Vec<Vec<u8>>,
        has_more: bool,
    ) {
        let size: usize = items.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(size + 128);
        match reply {
            ReplyTo::Ws(_) => {
                out.extend_from_slice(b"{\"type\":\"history\",");
                protocol::write_id(&mut out, id);
                out.extend_from_slice(b"\"room\":\"");
                out.extend_from_slice(room.as_bytes());
                out.extend_from_slice(b"\",\"messages\":[");
            }
            ReplyTo::Http(_) => out.extend_from_slice(b"{\"messages\":["),
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item);
        }
        let _ = write!(out, "],\"has_more\":{has_more}}}");
        match reply {
            ReplyTo::Ws(conn) => core.bus(
                conn.shard as usize,
                BusMsg::ToConn {
                    conn,
                    frame: json_frame(&out),
                },
            ),
            ReplyTo::Http(conn) => core.bus(
                conn.shard as usize,
                BusMsg::HttpReply {
                    conn,
                    status: 200,
                    body: Bytes::from(out),
                },
            ),
        }
    }

    fn home_presence(&mut self, core: &mut Core, room_name: &Arc<str>, conn: ConnRef, id: &ReqId) {
        let mut out = b"{\"type\":\"presence\",".to_vec();
        protocol::write_id(&mut out, id);
        out.extend_from_slice(b"\"room\":\"");
        out.extend_from_slice(room_name.as_bytes());
        out.extend_from_slice(b"\",\"users\":[");
        if let Some(room) = self.homes.get(room_name) {
            for (i, (user, p)) in room.users.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"user\":\"");
                out.extend_from_slice(user.as_bytes());
                out.extend_from_slice(b"\",\"name\":");
                out.extend_from_slice(p.name_json.as_bytes());
                out.push(b'}');
            }
        }
        out.extend_from_slice(b"]}");
        core.bus(
            conn.shard as usize,
            BusMsg::ToConn {
                conn,
                frame: json_frame(&out),
            },
        );
    }

    fn home_read(&mut self, core: &mut Core, room_name: Arc<str>, user: Arc<str>, seq: u64) {
        let Some(room) = self.homes.get_mut(&room_name) else {
            return;
        };
        let seq = seq.min(room.committed);
        let marker = room.read.entry(user.clone()).or_insert(0);
        if seq > *marker {
            *marker = seq;
            if let Some(store) = Self::store(core) {
                store.set_read(user.to_string(), room_name.to_string(), seq);
            }
        }
        let mut out = b"{\"type\":\"read\",\"room\":\"".to_vec();
        out.extend_from_slice(room_name.as_bytes());
        out.extend_from_slice(b"\",\"from\":\"");
        out.extend_from_slice(user.as_bytes());
        let _ = write!(out, "\",\"seq\":{seq}}}");
        self.broadcast(core, &room_name, json_frame(&out), Some(user));
    }

    // ------------------------------------------------------------------
    // User-home role

    fn user_rooms(&mut self, core: &mut Core, user: Arc<str>, conn: ConnRef, id: ReqId) {
        let rooms: Vec<Arc<str>> = self
            .user_homes
            .get(&user)
            .map(|h| h.rooms.to_vec())
            .unwrap_or_default();
        let mut by_home: HashMap<usize, Vec<Arc<str>>> = HashMap::new();
        for r in rooms {
            by_home.entry(home_of(&r, self.shards)).or_default().push(r);
        }
        let gather = self.next_op;
        self.next_op += 1;
        let g = Gather {
            conn,
            id,
            remaining: by_home.len(),
            entries: Vec::new(),
        };
        if by_home.is_empty() {
            self.send_rooms(core, g);
            return;
        }
        self.gathers.insert(gather, g);
        for (home, rooms) in by_home {
            core.bus(
                home,
                BusMsg::RoomInfo {
                    gather,
                    reply_shard: self.shard as u32,
                    user: user.clone(),
                    rooms,
                },
            );
        }
    }

    fn send_rooms(&mut self, core: &mut Core, mut g: Gather) {
        g.entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = b"{\"type\":\"rooms\",".to_vec();
        protocol::write_id(&mut out, &g.id);
        out.extend_from_slice(b"\"rooms\":[");
        for (i, (room, seq, read)) in g.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "{{\"room\":\"{room}\",\"seq\":{seq},\"read\":{read}}}");
        }
        out.extend_from_slice(b"]}");
        core.bus(
            g.conn.shard as usize,
            BusMsg::ToConn {
                conn: g.conn,
                frame: json_frame(&out),
            },
        );
    }

    // ------------------------------------------------------------------
    // Member role

    fn member_join_done(
        &mut self,
        core: &mut Core,
        room: Arc<str>,
        conn: ConnRef,
        frames: Vec<Bytes>,
        last_seq: u64,
        accepted: bool,
    ) {
        let Some(key) = core.resolve(conn) else {
            return; // its disconnect already told the home
        };
        let is_dm = room.starts_with("dm:");
        let Some(session) = core.conns[key].session.as_mut() else {
            return;
        };
        let Some(joined) = session.joined_mut(&room) else {
            return; // left meanwhile; the leave told the home
        };
        if joined.state != JoinState::Pending {
            return;
        }
        if !accepted {
            session.rooms.retain(|j| j.room != room);
            for f in frames {
                core.send(key, f);
            }
            return;
        }
        let held = std::mem::take(&mut joined.held);
        if is_dm {
            joined.state = JoinState::Dm;
            joined.floor = last_seq;
        } else {
            let members = self.local.entry(room.clone()).or_default();
            joined.state = JoinState::Member(members.len() as u32);
            members.push(key);
        }
        for f in frames {
            core.send(key, f);
        }
        let mut floor = last_seq;
        for (seq, f) in held {
            if seq == 0 || seq > floor {
                floor = floor.max(seq);
                core.send(key, f);
            }
        }
        if let Some(j) = core
            .conns
            .get_mut(key)
            .and_then(|c| c.session.as_mut())
            .and_then(|s| s.joined_mut(&room))
        {
            j.floor = floor;
        }
    }

    fn member_room_frame(
        &mut self,
        core: &mut Core,
        room: &str,
        frame: Bytes,
        except_user: Option<&str>,
        received: Option<Instant>,
    ) {
        let Some(members) = self.local.get(room) else {
            return;
        };
        let mut delivered = 0u64;
        for &key in members {
            if let Some(except) = except_user {
                let same = core
                    .conns
                    .get(key)
                    .and_then(|c| c.session.as_ref())
                    .is_some_and(|s| &*s.identity.user == except);
                if same {
                    continue;
                }
            }
            core.send(key, frame.clone());
            delivered += 1;
        }
        metrics::add(&core.metrics.deliveries, delivered);
        if let Some(t0) = received {
            let _ = self.latency.record(t0.elapsed().as_micros().max(1) as u64);
        }
    }

    fn member_user_frame(
        &mut self,
        core: &mut Core,
        user: &str,
        room: &str,
        seq: u64,
        frame: Bytes,
        received: Instant,
    ) {
        let Some(keys) = self.users_here.get(user) else {
            return;
        };
        let mut delivered = 0u64;
        for &key in keys {
            let Some(session) = core.conns.get_mut(key).and_then(|c| c.session.as_mut()) else {
                continue;
            };
            if let Some(j) = session.joined_mut(room) {
                match j.state {
                    JoinState::Pending => {
                        j.held.push((seq, frame.clone()));
                        continue;
                    }
                    _ if seq > 0 && seq <= j.floor => continue,
                    _ => j.floor = j.floor.max(seq),
                }
            }
            core.send(key, frame.clone());
            delivered += 1;
        }
        metrics::add(&core.metrics.deliveries, delivered);
        if seq > 0 {
            let _ = self
                .latency
                .record(received.elapsed().as_micros().max(1) as u64);
        }
    }

    // ------------------------------------------------------------------
    // Turn and tick

    /// Hands this turn's appends to the store as one request.
    pub fn end_of_turn(&mut self, core: &mut Core) {
        while let Ok(msg) = self.completions_rx.try_recv() {
            self.on_bus(core, msg);
        }
        if self.turn_appends.is_empty() {
            return;
        }
        let Some(store) = Self::store(core).cloned() else {
            return;
        };
        let batch = self.next_op;
        self.next_op += 1;
        let msgs = std::mem::take(&mut self.turn_appends);
        let epochs = std::mem::take(&mut self.turn_epochs);
        self.append_batches
            .insert(batch, std::mem::take(&mut self.turn_keys));
        let tx = self.completions_tx.clone();
        let waker = core.shared.links[self.shard].waker.clone();
        store.append(
            msgs,
            epochs,
            Box::new(move |results| {
                if tx.send(BusMsg::Appended { batch, results }).is_ok() {
                    let _ = waker.wake();
                }
            }),
        );
        // A rejection (queue full) answers on this thread: handle it now.
        while let Ok(msg) = self.completions_rx.try_recv() {
            self.on_bus(core, msg);
        }
    }

    pub fn on_tick(&mut self, core: &mut Core) {
        if core.now_ms >= self.last_export_ms + 1000 {
            self.last_export_ms = core.now_ms;
            core.metrics.export_latency(&self.latency);
        }
    }

    // ------------------------------------------------------------------
    // HTTP API

    /// Serves the HTTP API and the web client; None = answered later.
    pub fn on_http(&mut self, core: &mut Core, key: usize, req: HttpRequest) -> Option<Response> {
        let method = req.method.as_str();
        let path = req.path.as_str();
        if method == "POST" && path == "/api/guest" {
            return Some(self.http_guest(core, &req));
        }
        if method == "POST" && path == "/api/publish" {
            return self.http_publish(core, key, &req);
        }
        if let Some(rest) = path.strip_prefix("/api/rooms/") {
            if let Some(room) = rest.strip_suffix("/history") {
                if method != "GET" {
                    return Some(Response::error(405, "method not allowed"));
                }
                let room = crate::http::percent_decode(room);
                return self.http_history(core, key, &req, &room);
            }
        }
        if method == "GET" || method == "HEAD" {
            if let Some(asset) = crate::web_assets::asset(path) {
                let etag = asset_etag(asset.body);
                if req.if_none_match.as_deref() == Some(etag.as_str()) {
                    return Some(
                        Response::text(304, asset.content_type, Bytes::new()).header("etag", etag),
                    );
                }
                return Some(
                    Response::text(200, asset.content_type, Bytes::from_static(asset.body))
                        .header("cache-control", asset.cache_control)
                        .header("etag", etag)
                        .header("x-content-type-options", "nosniff"),
                );
            }
        }
        Some(Response::error(404, "not found"))
    }

    fn bearer_identity(core: &Core, req: &HttpRequest) -> Result<Identity, Response> {
        let token = req
            .bearer()
            .ok_or_else(|| Response::error(401, "missing token"))?;
        Self::chat_shared(core)
            .auth
            .verify(token, crate::auth::now_secs())
            .map_err(|e| {
                metrics::inc(&core.metrics.auth_failures);
                Response::error(401, &e.to_string())
            })
    }

    fn http_guest(&mut self, core: &Core, req: &HttpRequest) -> Response {
        let chat = Self::chat_shared(core);
        if !chat.guest {
            return Response::error(404, "guest login is off");
        }
        #[derive(serde::Deserialize)]
        struct GuestBody {
            name: String,
        }
        let body: GuestBody = match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(_) => return Response::error(400, "body must be {\"name\": \"...\"}"),
        };
        match chat.auth.mint_guest(&body.name, crate::auth::now_secs()) {
            Ok((user, token)) => Response::json(
                200,
                serde_json::json!({ "token": token, "user": user }).to_string(),
            ),
            Err(e) => Response::error(400, &e.to_string()),
        }
    }

    fn http_publish(&mut self, core: &mut Core, key: usize, req: &HttpRequest) -> Option<Response> {
        let identity = match Self::bearer_identity(core, req) {
            Ok(i) => i,
            Err(resp) => return Some(resp),
        };
        if !identity.admin {
            return Some(Response::error(403, "admin token required"));
        }
        #[derive(serde::Deserialize)]
        struct PublishBody<'a> {
            room: String,
            #[serde(borrow)]
            body: &'a serde_json::value::RawValue,
        }
        let Ok(text) = std::str::from_utf8(&req.body) else {
            return Some(Response::error(400, "body must be UTF-8 JSON"));
        };
        let body: PublishBody<'_> = match serde_json::from_str(text) {
            Ok(b) => b,
            Err(_) => {
                return Some(Response::error(
                    400,
                    "body must be {\"room\": \"...\", \"body\": ...}",
                ))
            }
        };
        if !protocol::valid_room(&body.room) || body.room.starts_with("dm:") {
            return Some(Response::error(400, "invalid room name"));
        }
        if body.body.get().len() > core.shared.cfg.max_body_bytes {
            // PROTOCOL.md 7: bad input on HTTP is 400 (the WebSocket
            // equivalent is error `too_large`).
            return Some(Response::error(400, "body over max_body_bytes"));
        }
        let room: Arc<str> = body.room.as_str().into();
        let conn = core.conn_ref(key);
        let name_json: Arc<str> = serde_json::to_string(&*identity.name)
            .unwrap_or_default()
            .into();
        core.bus(
            home_of(&room, self.shards),
            BusMsg::Publish {
                room,
                reply: ReplyTo::Http(conn),
                user: identity.user,
                name_json,
                body: body.body.get().into(),
                id: None,
                received: Instant::now(),
            },
        );
        None
    }

    fn http_history(
        &mut self,
        core: &mut Core,
        key: usize,
        req: &HttpRequest,
        room: &str,
    ) -> Option<Response> {
        let identity = match Self::bearer_identity(core, req) {
            Ok(i) => i,
            Err(resp) => return Some(resp),
        };
        if !protocol::valid_room(room) {
            return Some(Response::error(400, "invalid room name"));
        }
        if !identity.admin && !identity.may_access(room) {
            return Some(Response::error(403, "you may not read this room"));
        }
        let num = |name: &str| -> Result<Option<u64>, Response> {
            match req.query_param(name).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| {
                    Response::error(400, &format!("{name} must be a non-negative integer"))
                }),
            }
        };
        let (before, after, limit) = match (num("before"), num("after"), num("limit")) {
            (Ok(b), Ok(a), Ok(l)) => (b, a, l.unwrap_or(50)),
            (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return Some(r),
        };
        if !(1..=100).contains(&limit) {
            return Some(Response::error(400, "limit must be 1..100"));
        }
        let room: Arc<str> = room.into();
        let conn = core.conn_ref(key);
        core.bus(
            home_of(&room, self.shards),
            BusMsg::History {
                room,
                reply: ReplyTo::Http(conn),
                before,
                after,
                limit: limit as usize,
                id: None,
            },
        );
        None
    }
}

/// An error that was already handled (the connection is closing).
fn silent() -> ProtoError {
    ProtoError::new(ErrorCode::RateLimited, "")
}

/// The WebSocket header length of a server frame.
fn header_of(frame: &[u8]) -> Option<usize> {
    let len7 = frame.get(1)? & 0x7f;
    Some(match len7 {
        126 => 4,
        127 => 10,
        _ => 2,
    })
}

fn stored_name_json(m: &StoredMessage) -> String {
    serde_json::to_string(&m.name).unwrap_or_else(|_| "\"\"".into())
}

fn stored_message_json(m: &StoredMessage) -> Vec<u8> {
    let name_json = stored_name_json(m);
    let mut out = Vec::with_capacity(128 + m.body.len());
    protocol::write_message(
        &mut out,
        &MessageFields {
            room: &m.room,
            seq: m.seq,
            from: &m.from,
            name_json: &name_json,
            ts: m.ts,
            body: &m.body,
        },
    );
    out
}

fn stored_message_frame(m: &StoredMessage) -> Bytes {
    json_frame(&stored_message_json(m))
}

fn stored_history_item(m: &StoredMessage) -> Vec<u8> {
    let full = stored_message_json(m);
    let mut out = Vec::with_capacity(full.len());
    out.push(b'{');
    out.extend_from_slice(&full[protocol::MESSAGE_PREFIX_LEN..]);
    out
}

/// A strong ETag from the asset bytes (FNV-1a; assets are compiled in).
fn asset_etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in body {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}
