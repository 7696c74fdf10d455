//! Requests from a client, checked on the client's own shard, then handed
//! to the role that decides (a room's home, the user's home). One function
//! per request type.

use super::frames;
use super::msg::{HomeMsg, PublishReq, Requester, UserMsg};
use super::session::JoinState;
use super::{ChatApp, ChatPort, RoomName, Seq};
use crate::bus::ReplyTo;
use crate::limits::Admit;
use crate::metrics::{self, DisconnectReason};
use crate::protocol::{self, ErrorCode, ProtoError, ReqId, Request};
use crate::ws::close_code;
use std::sync::Arc;
use std::time::Instant;

/// Why a request was not carried out.
enum Refused {
    /// Answer with this error.
    Error(ProtoError),
    /// Already handled: the connection is closing.
    Closed,
}

impl From<ProtoError> for Refused {
    fn from(e: ProtoError) -> Self {
        Refused::Error(e)
    }
}

type Outcome = Result<(), Refused>;

/// Joins, leaves and new DM rooms per second, once the burst is spent.
const CHURN_PER_SEC: u32 = 10;

/// The churn burst: every allowed room at once, and a little more.
pub(super) fn churn_burst(max_rooms_per_conn: usize) -> u32 {
    u32::try_from(max_rooms_per_conn)
        .unwrap_or(u32::MAX)
        .saturating_add(20)
}

enum Bucket {
    Messages,
    Churn,
}

fn not_joined(what: &'static str) -> Refused {
    Refused::Error(ProtoError::new(ErrorCode::NotJoined, what))
}

impl ChatApp {
    pub(super) fn on_text(&mut self, port: &mut ChatPort, key: usize, text: &str) {
        let max_body = port.config().max_body_bytes;
        let (id, parsed) = protocol::parse_request(text, max_body);
        let outcome = match parsed {
            Ok(req) => self.handle(port, key, &id, req),
            Err(e) if e.unparsable => self.bad_frame(port, key, e),
            Err(e) => Err(Refused::Error(e)),
        };
        if let Err(Refused::Error(e)) = outcome {
            metrics::inc(&port.metrics().errors_sent);
            port.send(key, frames::error(&id, &e));
        }
    }

    /// An unparsable frame: answered, and counted toward close 1008.
    fn bad_frame(&mut self, port: &mut ChatPort, key: usize, e: ProtoError) -> Outcome {
        let (limit, now) = (port.config().max_parse_errors, port.now_ms());
        let too_many = port
            .session_mut(key)
            .is_some_and(|s| s.count_bad_frame(limit, now));
        if too_many {
            port.close(
                key,
                close_code::POLICY,
                "too many invalid frames",
                DisconnectReason::Abuse,
            );
            return Err(Refused::Closed);
        }
        Err(Refused::Error(e))
    }

    /// Applies the token bucket of publish, dm, typing and read.
    fn rate_limit(&mut self, port: &mut ChatPort, key: usize) -> Outcome {
        let (rate, burst) = (port.config().rate_per_sec, port.config().burst);
        self.admit(port, key, Bucket::Messages, rate, burst)
    }

    /// Applies the churn budget of join, leave and new DM rooms: generous
    /// enough to join every allowed room at once, then a steady pace.
    fn churn_limit(&mut self, port: &mut ChatPort, key: usize) -> Outcome {
        let burst = churn_burst(port.config().max_rooms_per_conn);
        self.admit(port, key, Bucket::Churn, CHURN_PER_SEC, burst)
    }

    fn admit(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        which: Bucket,
        rate: u32,
        burst: u32,
    ) -> Outcome {
        let now = port.now_ms();
        let Some(s) = port.session_mut(key) else {
            return Err(Refused::Closed);
        };
        let bucket = match which {
            Bucket::Messages => &mut s.bucket,
            Bucket::Churn => &mut s.churn,
        };
        match bucket.admit(rate, burst, now) {
            Admit::Yes => Ok(()),
            Admit::No { retry_after_ms } => {
                metrics::inc(&port.metrics().rate_limited);
                Err(ProtoError::rate_limited(retry_after_ms).into())
            }
            Admit::Abuse => {
                metrics::inc(&port.metrics().rate_limited);
                port.close(
                    key,
                    close_code::POLICY,
                    "rate limit exceeded repeatedly",
                    DisconnectReason::Abuse,
                );
                Err(Refused::Closed)
            }
        }
    }

    /// Who is asking, as the homes need it.
    fn requester(port: &ChatPort, key: usize) -> Result<Requester, Refused> {
        let s = port.session(key).ok_or(Refused::Closed)?;
        Ok(Requester {
            conn: port.conn_ref(key),
            user: s.identity.user.clone(),
            name_json: s.name_json.clone(),
        })
    }

    /// A request whose reply another role prepares: counted until the reply
    /// is queued, so a client cannot pile up replies it does not read.
    fn expect_reply(port: &mut ChatPort, key: usize) {
        if let Some(s) = port.session_mut(key) {
            s.inflight = s.inflight.saturating_add(1);
        }
    }

    fn require_joined(port: &ChatPort, key: usize, room: &str, what: &'static str) -> Outcome {
        let joined = port.session(key).is_some_and(|s| s.joined(room).is_some());
        if joined {
            Ok(())
        } else {
            Err(not_joined(what))
        }
    }

    fn handle(&mut self, port: &mut ChatPort, key: usize, id: &ReqId, req: Request<'_>) -> Outcome {
        match req {
            Request::Ping => {
                port.send(key, frames::pong(id));
                Ok(())
            }
            Request::Join {
                room,
                since,
                reads,
                batched,
            } => self.join(port, key, id, room, since, reads, batched),
            Request::Leave { room } => self.leave(port, key, id, room),
            Request::Publish { room, body } => self.publish_request(port, key, id, room, body),
            Request::Dm { to, body } => self.dm(port, key, id, to, body),
            Request::History {
                room,
                before,
                after,
                limit,
            } => self.history(port, key, id, room, before, after, limit),
            Request::Rooms => {
                let who = Self::requester(port, key)?;
                Self::expect_reply(port, key);
                let msg = UserMsg::RoomsRequest {
                    user: who.user.clone(),
                    conn: who.conn,
                    id: id.clone(),
                };
                self.router.to_user_home(port, &who.user, msg);
                Ok(())
            }
            Request::Presence { room } => {
                Self::require_joined(port, key, room, "not joined to this room")?;
                Self::expect_reply(port, key);
                let msg = HomeMsg::Presence {
                    room: Arc::from(room),
                    conn: port.conn_ref(key),
                    id: id.clone(),
                };
                self.router.to_room_home(port, room, msg);
                Ok(())
            }
            Request::Typing { room } => {
                Self::require_joined(port, key, room, "not joined to this room")?;
                self.rate_limit(port, key)?;
                let who = Self::requester(port, key)?;
                let msg = HomeMsg::Typing {
                    room: Arc::from(room),
                    user: who.user,
                };
                self.router.to_room_home(port, room, msg);
                Ok(())
            }
            Request::Read { room, seq } => {
                Self::require_joined(port, key, room, "not joined to this room")?;
                self.rate_limit(port, key)?;
                let who = Self::requester(port, key)?;
                let msg = HomeMsg::Read {
                    room: Arc::from(room),
                    user: who.user,
                    seq,
                };
                self.router.to_room_home(port, room, msg);
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        id: &ReqId,
        room: &str,
        since: Option<Seq>,
        reads: bool,
        batched: bool,
    ) -> Outcome {
        let who = Self::requester(port, key)?;
        let session = port.session(key).ok_or(Refused::Closed)?;
        if !session.identity.may_access(room) {
            return Err(ProtoError::new(ErrorCode::Forbidden, "you may not join this room").into());
        }
        let already = session.joined(room).is_some();
        if !already && session.rooms.len() >= port.config().max_rooms_per_conn {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                "joined to too many rooms (max_rooms_per_conn)",
            )
            .into());
        }
        self.churn_limit(port, key)?;
        let session = port.session(key).ok_or(Refused::Closed)?;
        let room: RoomName = Arc::from(room);
        let mut rejoin = false;
        if let Some((state, was_batched)) = session.joined(&room).map(|j| (j.state, j.batched)) {
            match state {
                JoinState::Pending | JoinState::Replaying { .. } => {
                    return Err(
                        ProtoError::new(ErrorCode::BadRequest, "join already in progress").into(),
                    )
                }
                JoinState::Member(pos) => {
                    // A second join replays again: stop live frames until
                    // the new JoinDone, which brings the replay.
                    self.remove_member(port, &room, pos, was_batched);
                    rejoin = true;
                }
                JoinState::Dm => rejoin = true,
            }
        }
        // DM rooms have two members: their presence stays individual.
        let batched = batched && !room.starts_with("dm:");
        if let Some(s) = port.session_mut(key) {
            s.set_pending(&room, batched);
        }
        Self::expect_reply(port, key);
        let msg = HomeMsg::Join {
            room: room.clone(),
            who,
            since,
            id: id.clone(),
            rejoin,
            reads,
            batched,
        };
        self.router.to_room_home(port, &room, msg);
        Ok(())
    }

    fn leave(&mut self, port: &mut ChatPort, key: usize, id: &ReqId, room: &str) -> Outcome {
        let who = Self::requester(port, key)?;
        Self::require_joined(port, key, room, "not joined to this room")?;
        self.churn_limit(port, key)?;
        let session = port.session(key).ok_or(Refused::Closed)?;
        let Some(j) = session.joined(room) else {
            return Err(not_joined("not joined to this room"));
        };
        let (state, room, batched) = (j.state, j.room.clone(), j.batched);
        if let JoinState::Member(pos) = state {
            self.remove_member(port, &room, pos, batched);
        }
        if let Some(s) = port.session_mut(key) {
            s.forget(&room);
        }
        port.send(key, frames::left(id, &room));
        let msg = HomeMsg::Leave {
            room: room.clone(),
            conn: who.conn,
            user: who.user,
            explicit: true,
            batched,
        };
        self.router.to_room_home(port, &room, msg);
        Ok(())
    }

    fn publish_request(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        id: &ReqId,
        room: &str,
        body: &str,
    ) -> Outcome {
        Self::require_joined(port, key, room, "join the room before publishing")?;
        if room.starts_with("dm:") {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                "use dm to write to a direct conversation",
            )
            .into());
        }
        self.rate_limit(port, key)?;
        let who = Self::requester(port, key)?;
        self.send_publish(port, Arc::from(room), who, body, id);
        Ok(())
    }

    fn dm(&mut self, port: &mut ChatPort, key: usize, id: &ReqId, to: &str, body: &str) -> Outcome {
        let who = Self::requester(port, key)?;
        if *to == *who.user {
            return Err(
                ProtoError::new(ErrorCode::BadRequest, "cannot send a dm to yourself").into(),
            );
        }
        self.rate_limit(port, key)?;
        let room: RoomName = protocol::dm_room(&who.user, to).into();
        // A conversation this connection has not joined may be a new one
        // (even with a made-up user): budgeted like a join.
        if port.session(key).is_none_or(|s| s.joined(&room).is_none()) {
            self.churn_limit(port, key)?;
        }
        self.send_publish(port, room, who, body, id);
        Ok(())
    }

    fn send_publish(
        &mut self,
        port: &mut ChatPort,
        room: RoomName,
        who: Requester,
        body: &str,
        id: &ReqId,
    ) {
        let msg = HomeMsg::Publish(Box::new(PublishReq {
            room: room.clone(),
            reply: ReplyTo::Ws(who.conn),
            user: who.user,
            name_json: who.name_json,
            body: body.into(),
            id: id.clone(),
            received: Instant::now(),
        }));
        self.router.to_room_home(port, &room, msg);
    }

    #[allow(clippy::too_many_arguments)]
    fn history(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        id: &ReqId,
        room: &str,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: usize,
    ) -> Outcome {
        let session = port.session(key).ok_or(Refused::Closed)?;
        if !session.identity.may_access(room) {
            return Err(ProtoError::new(ErrorCode::Forbidden, "you may not read this room").into());
        }
        Self::expect_reply(port, key);
        let msg = HomeMsg::History {
            room: Arc::from(room),
            reply: ReplyTo::Ws(port.conn_ref(key)),
            before,
            after,
            limit,
            id: id.clone(),
        };
        self.router.to_room_home(port, room, msg);
        Ok(())
    }
}
