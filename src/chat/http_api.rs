//! The HTTP side of the chat: the bundled web client, guest login, and the
//! server API (`POST /api/publish`, `GET /api/rooms/{room}/history`). API
//! requests go to the room's home like their WebSocket twins; the response
//! comes back over the bus (`None` here: answered later).

use super::msg::{HomeMsg, PublishReq};
use super::{ChatApp, ChatPort, NameJson, RoomName};
use crate::auth::Identity;
use crate::bus::ReplyTo;
use crate::http::{Request, Response};
use crate::metrics;
use crate::protocol;
use bytes::Bytes;
use std::time::Instant;

impl ChatApp {
    /// Serves the HTTP API and the web client; None = answered later.
    pub(super) fn serve_http(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        req: Request,
    ) -> Option<Response> {
        let method = req.method.as_str();
        let path = req.path.as_str();
        if method == "POST" && path == "/api/guest" {
            return Some(self.http_guest(port, key, &req));
        }
        if path == "/api/me" {
            return Some(self.http_me(port, &req));
        }
        if let Some(rest) = path.strip_prefix("/api/admin/") {
            return self.serve_admin(port, key, &req, rest);
        }
        if method == "POST" && path == "/api/publish" {
            return self.http_publish(port, key, &req);
        }
        if let Some(rest) = path.strip_prefix("/api/rooms/") {
            if let Some(room) = rest.strip_suffix("/history") {
                if method != "GET" {
                    return Some(Response::error(405, "method not allowed"));
                }
                let room = crate::http::percent_decode(room);
                return self.http_history(port, key, &req, &room);
            }
        }
        if method == "GET" || method == "HEAD" {
            if let Some(asset) = crate::web_assets::asset(path) {
                return Some(asset_response(&asset, req.if_none_match.as_deref()));
            }
        }
        Some(Response::error(404, "not found"))
    }

    pub(super) fn bearer_identity(
        &self,
        port: &ChatPort,
        req: &Request,
    ) -> Result<Identity, Response> {
        let token = req
            .bearer()
            .ok_or_else(|| Response::error(401, "missing token"))?;
        self.shared
            .auth
            .verify(token, crate::auth::now_secs())
            .map_err(|e| {
                metrics::inc(&port.metrics().auth_failures);
                Response::error(401, &e.to_string())
            })
    }

    fn http_guest(&mut self, port: &ChatPort, key: usize, req: &Request) -> Response {
        if !self.shared.guest {
            return Response::error(404, "guest login is off");
        }
        if let Some(ip) = port.peer_ip(key) {
            let now_ms = crate::chat::now_unix_ms();
            let verdict = self
                .shared
                .guest_rate
                .lock()
                .check(crate::limits::ip_group(ip), now_ms);
            if let Err(retry_after_ms) = verdict {
                let body = serde_json::json!({
                    "error": "too many guest logins from this address",
                    "retry_after_ms": retry_after_ms,
                });
                return Response::json(429, body.to_string())
                    .header("retry-after", retry_after_ms.div_ceil(1000).to_string());
            }
        }
        #[derive(serde::Deserialize)]
        struct GuestBody {
            name: String,
        }
        let body: GuestBody = match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(_) => return Response::error(400, "body must be {\"name\": \"...\"}"),
        };
        match self
            .shared
            .auth
            .mint_guest(&body.name, crate::auth::now_secs())
        {
            Ok((user, token)) => Response::json(
                200,
                serde_json::json!({ "token": token, "user": user }).to_string(),
            ),
            Err(e) => Response::error(400, &e.to_string()),
        }
    }

    fn http_publish(&mut self, port: &mut ChatPort, key: usize, req: &Request) -> Option<Response> {
        let identity = match self.bearer_identity(port, req) {
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
        if body.body.get().len() > port.config().max_body_bytes {
            // Bad input on HTTP is 400 (the WebSocket twin is `too_large`).
            return Some(Response::error(400, "body over max_body_bytes"));
        }
        let room: RoomName = body.room.as_str().into();
        let name_json: NameJson = serde_json::to_string(&*identity.name)
            .unwrap_or_default()
            .into();
        let msg = HomeMsg::Publish(Box::new(PublishReq {
            room: room.clone(),
            reply: ReplyTo::Http(port.conn_ref(key)),
            user: identity.user,
            name_json,
            body: body.body.get().into(),
            id: None,
            received: Instant::now(),
        }));
        self.router.to_room_home(port, &room, msg);
        None
    }

    fn http_history(
        &mut self,
        port: &mut ChatPort,
        key: usize,
        req: &Request,
        room: &str,
    ) -> Option<Response> {
        let identity = match self.bearer_identity(port, req) {
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
        let msg = HomeMsg::History {
            room: room.into(),
            reply: ReplyTo::Http(port.conn_ref(key)),
            before,
            after,
            limit: limit as usize,
            id: None,
        };
        self.router.to_room_home(port, room, msg);
        None
    }
}

/// A bundled asset, or 304 when the client's copy is current.
fn asset_response(asset: &crate::web_assets::Asset, if_none_match: Option<&str>) -> Response {
    let etag = asset_etag(asset.body);
    if if_none_match == Some(etag.as_str()) {
        return Response::text(304, asset.content_type, Bytes::new()).header("etag", etag);
    }
    Response::text(200, asset.content_type, Bytes::from_static(asset.body))
        .header("cache-control", asset.cache_control)
        .header("etag", etag)
        .header("x-content-type-options", "nosniff")
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
