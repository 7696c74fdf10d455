//! `GET /api/me`: who a bearer token says its holder is. A page that cannot
//! open its WebSocket (a browser sees only close 1006, never the 401 of the
//! upgrade) asks here whether its token is the reason, and if so stops
//! reconnecting instead of retrying forever.
//!
//! 200 `{"user","name","admin","exp"}` (`exp` is null for a token without
//! expiry); 401 `{"error":"<reason>"}` for a missing, malformed, wrongly
//! signed or expired token (the same reasons the upgrade's 401 gives).

use super::{ChatApp, ChatPort};
use crate::auth::{Authenticator, Identity};
use crate::http::{Request, Response};
use crate::metrics;

impl ChatApp {
    /// Answers `/api/me` (any method other than GET and HEAD is 405).
    pub(super) fn http_me(&self, port: &ChatPort, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return Response::error(405, "method not allowed").header("allow", "GET, HEAD");
        }
        let resp = me_response(&self.shared.auth, req, crate::auth::now_secs());
        if resp.status == 401 {
            metrics::inc(&port.metrics().auth_failures);
        }
        resp
    }
}

/// The answer for a request's bearer token at `now` (Unix seconds).
pub(crate) fn me_response(auth: &Authenticator, req: &Request, now: u64) -> Response {
    let resp = match req.bearer() {
        None => Response::error(401, "missing token"),
        Some(token) => match auth.verify(token, now) {
            Ok(identity) => Response::json(200, me_json(&identity, auth.leeway_secs())),
            Err(e) => Response::error(401, &e.to_string()),
        },
    };
    // Says who the caller is: never cached by anyone.
    resp.header("cache-control", "no-store")
}

/// `exp` is the token's own claim: `Identity::exp` carries the leeway too.
fn me_json(identity: &Identity, leeway_secs: u64) -> String {
    serde_json::json!({
        "user": &*identity.user,
        "name": &*identity.name,
        "admin": identity.admin,
        "exp": identity.exp.map(|e| e.saturating_sub(leeway_secs)),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_request;

    const SECRET: &[u8] = b"http-me-test-secret";

    fn request(auth: Option<&str>) -> Request {
        let mut raw = String::from("GET /api/me HTTP/1.1\r\nHost: x\r\n");
        if let Some(a) = auth {
            raw.push_str(&format!("Authorization: {a}\r\n"));
        }
        raw.push_str("\r\n");
        parse_request(raw.as_bytes()).unwrap().unwrap().0
    }

    fn body(resp: &Response) -> serde_json::Value {
        serde_json::from_slice(&resp.body).unwrap()
    }

    #[test]
    fn valid_token_says_who() {
        let auth = Authenticator::new(Some(SECRET), None, 0).unwrap();
        let now = crate::auth::now_secs();
        let tok = auth
            .mint("alice", Some("Alice"), Some(60), None, true, now)
            .unwrap();
        let resp = me_response(&auth, &request(Some(&format!("Bearer {tok}"))), now);
        assert_eq!(resp.status, 200);
        let b = body(&resp);
        assert_eq!(b["user"], "alice");
        assert_eq!(b["name"], "Alice");
        assert_eq!(b["admin"], true);
        assert_eq!(b["exp"], now + 60);
    }

    #[test]
    fn bad_tokens_are_401_with_reason() {
        let auth = Authenticator::new(Some(SECRET), None, 0).unwrap();
        let now = crate::auth::now_secs();
        let resp = me_response(&auth, &request(None), now);
        assert_eq!(resp.status, 401);
        assert_eq!(body(&resp)["error"], "missing token");
        let resp = me_response(&auth, &request(Some("Bearer nonsense")), now);
        assert_eq!(resp.status, 401);
        assert_eq!(body(&resp)["error"], "malformed token");
        let old = auth
            .mint("bob", None, Some(60), None, false, now - 3600)
            .unwrap();
        let resp = me_response(&auth, &request(Some(&format!("Bearer {old}"))), now);
        assert_eq!(resp.status, 401);
        assert_eq!(body(&resp)["error"], "token expired");
    }
}
