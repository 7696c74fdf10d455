//! HTTP/1.1 on the WebSocket port: request parsing (httparse) and response
//! encoding. Keep-alive is supported; pipelining is not needed by clients.

use bytes::Bytes;
use std::fmt::Write as _;

/// Largest request head accepted; a bigger one gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body accepted by the HTTP API.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
const MAX_HEADERS: usize = 32;

/// The parts of a request the server acts on. Owned, so the read buffer can
/// be reused while the request is handled.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub origin: Option<String>,
    /// `Sec-WebSocket-Extensions`, several headers joined with `, `.
    pub ws_extensions: Option<String>,
    pub authorization: Option<String>,
    pub keep_alive: bool,
    pub if_none_match: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// Value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }

    /// Whether `Sec-WebSocket-Key` is present and valid: base64 that decodes
    /// to exactly 16 bytes (RFC 6455 4.2.1). An upgrade with a key that is
    /// present but invalid is answered 400 [`INVALID_WS_KEY`].
    pub fn ws_key_valid(&self) -> bool {
        self.ws_key.as_deref().is_some_and(valid_ws_key)
    }

    /// Whether this is a `HEAD` request (answered without a body).
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The bearer token of an `Authorization: Bearer` header.
    pub fn bearer(&self) -> Option<&str> {
        let auth = self.authorization.as_deref()?;
        let (scheme, token) = auth.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

/// The 400 message for an upgrade whose `Sec-WebSocket-Key` is invalid.
pub const INVALID_WS_KEY: &str = "invalid sec-websocket-key";

/// A `Sec-WebSocket-Key` is the base64 (with padding) of 16 bytes: 24
/// characters ending in `==`. Non-canonical trailing bits are refused.
pub fn valid_ws_key(key: &str) -> bool {
    use base64::Engine as _;
    let mut out = [0u8; 18];
    key.len() == 24
        && matches!(
            base64::engine::general_purpose::STANDARD.decode_slice(key, &mut out),
            Ok(16)
        )
}

/// Why a request could not be parsed; each maps to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("chunked request bodies are not supported")]
    Chunked,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::Chunked => 411,
        }
    }
}

/// Parses one request from the front of `buf`. Returns the request and the
/// bytes it used, or `None` when more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut out = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        // HTTP/1.1 defaults to keep-alive, 1.0 to close.
        keep_alive: req.version == Some(1),
        ..Request::default()
    };
    let mut content_length = 0usize;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?
            .trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            out.upgrade_websocket = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("upgrade") {
                    out.connection_upgrade = true;
                } else if token.eq_ignore_ascii_case("close") {
                    out.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    out.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.ws_version = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            // Repeated headers are one comma-separated list (RFC 6455 9.1).
            match &mut out.ws_extensions {
                Some(list) => {
                    list.push_str(", ");
                    list.push_str(value);
                }
                None => out.ws_extensions = Some(value.to_string()),
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("if-none-match") {
            out.if_none_match = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| HttpError::Malformed("bad content-length".into()))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Chunked);
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge);
    }
    let total = head_len + content_length;
    if buf.len() < total {
        return Ok(None);
    }
    out.body = buf[head_len..total].to_vec();
    Ok(Some((out, total)))
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query value.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// An HTTP response ready to be written.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Response {
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// `{"error": message}` with the given status.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Response::json(status, body)
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Serializes head and body into one buffer (copies the body; for a
    /// large or shared body prefer [`Response::encode_parts_for`]).
    pub fn encode(&self, keep_alive: bool) -> Bytes {
        self.encode_for("GET", keep_alive)
    }

    /// Like [`Response::encode`], for a request of `method`: a `HEAD` gets
    /// the same head (the real `content-length`) and no body.
    pub fn encode_for(&self, method: &str, keep_alive: bool) -> Bytes {
        let head = self.head_string(keep_alive);
        if method == "HEAD" || self.body.is_empty() {
            return Bytes::from(head.into_bytes());
        }
        let mut out = Vec::with_capacity(head.len() + self.body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
        Bytes::from(out)
    }

    /// The response as two buffers to queue one after the other: the
    /// encoded head, and the body (`None` for `HEAD` or an empty body). The
    /// body is the response's own `Bytes`, shared, never copied: a static
    /// asset goes out straight from the binary.
    pub fn encode_parts_for(&self, method: &str, keep_alive: bool) -> (Bytes, Option<Bytes>) {
        let head = Bytes::from(self.head_string(keep_alive).into_bytes());
        let body = (method != "HEAD" && !self.body.is_empty()).then(|| self.body.clone());
        (head, body)
    }

    /// [`Response::encode_parts_for`] for a request that is not `HEAD`.
    pub fn encode_parts(&self, keep_alive: bool) -> (Bytes, Option<Bytes>) {
        self.encode_parts_for("GET", keep_alive)
    }

    /// The status line and headers, ending with the empty line.
    fn head_string(&self, keep_alive: bool) -> String {
        let extra: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum();
        let mut head = String::with_capacity(128 + extra);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        head
    }
}

/// The 101 response that completes a WebSocket upgrade.
pub fn switching_protocols(accept: &str) -> Bytes {
    switching_protocols_with(accept, None)
}

/// The 101 response, with the negotiated `Sec-WebSocket-Extensions` if any.
pub fn switching_protocols_with(accept: &str, extensions: Option<&str>) -> Bytes {
    let ext = extensions
        .map(|e| format!("sec-websocket-extensions: {e}\r\n"))
        .unwrap_or_default();
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n{ext}\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upgrade_request() {
        let raw = b"GET /ws?token=abc%2Edef&x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://x\r\n\r\n";
        let (req, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ws");
        assert!(req.upgrade_websocket && req.connection_upgrade);
        assert_eq!(req.query_param("token").as_deref(), Some("abc.def"));
        assert_eq!(req.query_param("x").as_deref(), Some("1"));
        assert_eq!(req.query_param("nope"), None);
        assert_eq!(req.origin.as_deref(), Some("http://x"));
        assert_eq!(req.ws_version.as_deref(), Some("13"));
    }

    #[test]
    fn partial_head_and_body() {
        let raw = b"POST /api/guest HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert!(parse_request(&raw[..10]).unwrap().is_none());
        assert!(parse_request(&raw[..raw.len() - 2]).unwrap().is_none());
        let (req, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(req.body, b"hello");
        assert!(req.keep_alive);
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(
            parse_request(b"GARBAGE\x00\r\n\r\n").unwrap_err().status(),
            400
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request(chunked).unwrap_err().status(), 411);
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(parse_request(big.as_bytes()).unwrap_err().status(), 413);
        let long = vec![b'a'; MAX_HEAD_BYTES + 10];
        let mut req = b"GET / HTTP/1.1\r\nX: ".to_vec();
        req.extend_from_slice(&long);
        assert_eq!(parse_request(&req).unwrap_err().status(), 431);
        let bad_len = b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n";
        assert_eq!(parse_request(bad_len).unwrap_err().status(), 400);
    }

    #[test]
    fn connection_close_and_http10() {
        let (req, _) = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!req.keep_alive);
        let (req, _) = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!req.keep_alive);
    }

    #[test]
    fn bearer_and_percent_decoding() {
        let (req, _) = parse_request(b"GET / HTTP/1.1\r\nAuthorization: Bearer  tok.en \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.bearer(), Some("tok.en"));
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
    }

    #[test]
    fn response_encoding() {
        let r = Response::error(404, "not found").encode(true);
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("content-length: 21\r\n"));
        assert!(text.ends_with("{\"error\":\"not found\"}"));
    }

    #[test]
    fn ws_key_validation() {
        let parse = |key: &str| {
            let raw = format!(
                "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            parse_request(raw.as_bytes()).unwrap().unwrap().0
        };
        // RFC 6455's sample nonce, and 16 bytes of 0x00 / 0xff.
        for good in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/////////////////////w==",
        ] {
            assert!(valid_ws_key(good), "{good}");
            let req = parse(good);
            assert!(req.ws_key_valid(), "{good}");
            assert_eq!(req.ws_key.as_deref(), Some(good));
        }
        for bad in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",       // no padding
            "dGhlIHNhbXBsZSBub25jZQ=",      // short padding
            "dGhlIHNhbXBsZSBub25jZQ===",    // too long
            "dGhlIHNhbXBsZSBub25jZR==",     // non-canonical trailing bits
            "dGhlIHNhbXBsZSBub25jZ!==",     // not base64
            "dGhlIHNhbXBsZSBub25jZQ-_",     // url-safe alphabet
            "dGhlIHNhbXBsZSBub25jZSBzbw==", // 17 bytes
            "dGhlIHNhbXBsZSBub25j",         // 15 bytes
            "MTIzNDU2Nzg5MDEyMzQ1Ng",       // 16 bytes, no padding
        ] {
            assert!(!valid_ws_key(bad), "{bad}");
            let req = parse(bad);
            assert!(!req.ws_key_valid(), "{bad}");
        }
        // No key at all is not valid either (the reactor answers 400 for
        // both; a missing key keeps its own message).
        let (req, _) = parse_request(b"GET /ws HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert!(req.ws_key.is_none() && !req.ws_key_valid());
    }

    #[test]
    fn head_has_length_but_no_body() {
        let resp = Response::text(200, "text/plain", Bytes::from_static(b"hello world"));
        let get = resp.encode_for("GET", true);
        let head = resp.encode_for("HEAD", true);
        assert!(get.ends_with(b"\r\n\r\nhello world"));
        let text = std::str::from_utf8(&head).unwrap();
        assert!(text.contains("content-length: 11\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert_eq!(&get[..head.len()], &head[..], "same head for GET and HEAD");
        assert_eq!(get.len(), head.len() + 11);
        let (h, body) = resp.encode_parts_for("HEAD", false);
        assert!(body.is_none());
        assert!(std::str::from_utf8(&h)
            .unwrap()
            .contains("content-length: 11\r\n"));
        let (req, _) = parse_request(b"HEAD / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert!(req.is_head());
    }

    #[test]
    fn static_body_is_shared_not_copied() {
        static ASSET: &[u8] = b"body of a static asset, compiled into the binary";
        let resp =
            Response::text(200, "text/plain", Bytes::from_static(ASSET)).header("etag", "\"x\"");
        for _ in 0..3 {
            let (head, body) = resp.encode_parts(true);
            let body = body.expect("a body");
            // The very same bytes: no copy per request.
            assert_eq!(body.as_ptr(), ASSET.as_ptr());
            assert_eq!(body.len(), ASSET.len());
            let text = std::str::from_utf8(&head).unwrap();
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
            assert!(text.contains(&format!("content-length: {}\r\n", ASSET.len())));
            assert!(text.contains("etag: \"x\"\r\n"));
            assert!(text.ends_with("\r\n\r\n"));
            // Head then body is exactly what `encode` produces.
            let mut joined = head.to_vec();
            joined.extend_from_slice(&body);
            assert_eq!(joined, resp.encode(true).to_vec());
        }
        // A shared (refcounted) body is shared too.
        let shared = Bytes::from(vec![7u8; 4096]);
        let resp = Response::json(200, shared.clone());
        let (_, body) = resp.encode_parts(false);
        assert_eq!(body.unwrap().as_ptr(), shared.as_ptr());
        // An empty body is no second buffer.
        assert!(Response::json(204, Bytes::new())
            .encode_parts(true)
            .1
            .is_none());
    }
}
