//! Client requests (parsing and validation) and server frames (encoding),
//! per PROTOCOL.md sections 3 to 5.
//!
//! Requests are parsed with serde_json into borrowed `RawValue`s: one pass
//! over the frame, and `body` comes out as the exact text the client sent,
//! so it is forwarded verbatim (a 20-digit integer stays that integer) and
//! never re-serialized. `benches/protocol.rs` compares this with simd-json.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::Write as _;

/// Error codes of PROTOCOL.md 5.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    InvalidRoom,
    Forbidden,
    NotJoined,
    TooLarge,
    RateLimited,
    NotFound,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the same error maps to in the HTTP API.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }
}

/// A request that cannot be served; answered with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// Whether the frame itself failed to parse (counts toward close 1008).
    pub unparsable: bool,
    /// For `rate_limited`: when the client may try again.
    pub retry_after_ms: Option<u64>,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ProtoError {
            code,
            message: message.into(),
            unparsable: false,
            retry_after_ms: None,
        }
    }

    /// A `rate_limited` error that tells the client when to retry.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        ProtoError {
            code: ErrorCode::RateLimited,
            message: format!("rate limit exceeded; retry after {retry_after_ms} ms").into(),
            unparsable: false,
            retry_after_ms: Some(retry_after_ms),
        }
    }

    fn unparsable(message: impl Into<Cow<'static, str>>) -> Self {
        ProtoError {
            code: ErrorCode::BadRequest,
            message: message.into(),
            unparsable: true,
            retry_after_ms: None,
        }
    }
}

/// The request `id`, kept as its JSON text to echo back unchanged.
pub type ReqId = Option<Box<str>>;

/// A parsed, validated client request.
#[derive(Debug, PartialEq)]
pub enum Request<'a> {
    Join {
        room: &'a str,
        since: Option<u64>,
        /// Extension: `joined` also carries the members' read markers.
        reads: bool,
        /// Extension (`"presence":"batched"`): presence of this room comes
        /// as `presence_diff` frames instead of `user_joined`/`user_left`.
        batched: bool,
    },
    Leave {
        room: &'a str,
    },
    Publish {
        room: &'a str,
        body: &'a str,
    },
    Dm {
        to: &'a str,
        body: &'a str,
    },
    History {
        room: &'a str,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    },
    Rooms,
    Presence {
        room: &'a str,
    },
    Typing {
        room: &'a str,
    },
    Read {
        room: &'a str,
        seq: u64,
    },
    Ping,
}

/// Every field is kept raw; a field given as `null` is present (`Some`
/// holding `null`), so that `"body": null` is a body and `"id": null` an
/// invalid id rather than a missing one.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    before: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    after: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    reads: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    presence: Option<&'a RawValue>,
}

/// A field that is present, whatever its value (`null` included).
fn present<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Parses a text frame into its `id` and request. The `id` is returned even
/// when the request is invalid, so the error reply can carry it.
pub fn parse_request(text: &str, max_body: usize) -> (ReqId, Result<Request<'_>, ProtoError>) {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let msg = if serde_json::from_str::<&RawValue>(text).is_ok() {
            "frame must be a JSON object"
        } else {
            "frame is not valid JSON"
        };
        return (None, Err(ProtoError::unparsable(msg)));
    }
    let raw: RawRequest<'_> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            return (
                None,
                Err(ProtoError::unparsable(format!(
                    "frame is not valid JSON: {e}"
                ))),
            )
        }
    };
    let id = match raw.id.map(parse_id).transpose() {
        Ok(id) => id,
        Err(e) => return (None, Err(e)),
    };
    (id, validate(&raw, max_body))
}

/// Largest integer `id` (2^53 - 1): every JSON client reads it exactly.
pub const MAX_INT_ID: u64 = (1 << 53) - 1;
/// Longest string `id`, in characters.
pub const MAX_STR_ID_CHARS: usize = 64;

/// Checks an `id` against PROTOCOL.md 4.1 and returns it exactly as it came
/// (its raw JSON text): an integer 0..=2^53-1 in plain digits, or a string
/// of at most 64 characters. Anything else is `bad_request`.
fn parse_id(raw: &RawValue) -> Result<Box<str>, ProtoError> {
    let text = raw.get();
    if text.starts_with('"') {
        // Characters are counted after unescaping: `"\u0041"` is one.
        let s: Cow<'_, str> = serde_json::from_str(text)
            .map_err(|_| ProtoError::new(ErrorCode::BadRequest, "invalid id"))?;
        if s.chars().count() > MAX_STR_ID_CHARS {
            return Err(ProtoError::new(
                ErrorCode::BadRequest,
                "id longer than 64 characters",
            ));
        }
        return Ok(text.into());
    }
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        // JSON already forbids leading zeros; a fraction, an exponent or a
        // sign leaves a non-digit, and more than 16 digits is over 2^53 - 1
        // (so a 5,000-digit id is refused without being parsed).
        let plain = text.len() <= 16 && text.bytes().all(|b| b.is_ascii_digit());
        if plain && text.parse::<u64>().is_ok_and(|n| n <= MAX_INT_ID) {
            return Ok(text.into());
        }
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            "id must be an integer from 0 to 9007199254740991 or a string of at most 64 characters",
        ));
    }
    Err(ProtoError::new(
        ErrorCode::BadRequest,
        "id must be a number or a string",
    ))
}

fn validate<'a>(raw: &RawRequest<'a>, max_body: usize) -> Result<Request<'a>, ProtoError> {
    let ty_raw = raw
        .ty
        .ok_or_else(|| ProtoError::unparsable("missing field type"))?;
    // Borrowed unless it has escapes (`"p\u0069ng"` is still `ping`).
    let ty: Cow<'_, str> = match serde_json::from_str::<&str>(ty_raw.get()) {
        Ok(t) => Cow::Borrowed(t),
        Err(_) => Cow::Owned(
            serde_json::from_str::<String>(ty_raw.get())
                .map_err(|_| ProtoError::unparsable("field type must be a string"))?,
        ),
    };
    Ok(match &*ty {
        "join" => Request::Join {
            room: room_field(raw.room)?,
            since: opt_u64(raw.since, "since")?,
            reads: opt_bool(raw.reads, "reads")?,
            batched: presence_mode(raw.presence)?,
        },
        "leave" => Request::Leave {
            room: room_field(raw.room)?,
        },
        "publish" => Request::Publish {
            room: room_field(raw.room)?,
            body: body_field(raw.body, max_body)?,
        },
        "dm" => {
            let to = str_field(raw.to, "to")?;
            if !valid_user(to) {
                return Err(ProtoError::new(
                    ErrorCode::BadRequest,
                    "invalid user id in to",
                ));
            }
            Request::Dm {
                to,
                body: body_field(raw.body, max_body)?,
            }
        }
        "history" => {
            let limit = match opt_u64(raw.limit, "limit")? {
                None => 50,
                Some(n @ 1..=100) => n as usize,
                Some(_) => {
                    return Err(ProtoError::new(
                        ErrorCode::BadRequest,
                        "limit must be 1..100",
                    ))
                }
            };
            Request::History {
                room: room_field(raw.room)?,
                before: opt_u64(raw.before, "before")?,
                after: opt_u64(raw.after, "after")?,
                limit,
            }
        }
        "rooms" => Request::Rooms,
        "presence" => Request::Presence {
            room: room_field(raw.room)?,
        },
        "typing" => Request::Typing {
            room: room_field(raw.room)?,
        },
        "read" => Request::Read {
            room: room_field(raw.room)?,
            seq: opt_u64(raw.seq, "seq")?
                .ok_or_else(|| ProtoError::new(ErrorCode::BadRequest, "missing field seq"))?,
        },
        "ping" => Request::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(ProtoError::new(
                ErrorCode::UnknownType,
                format!("unknown type {shown:?}"),
            ));
        }
    })
}

/// A string field that must be present; escapes are not allowed in ids and
/// room names (their alphabets have no characters that need them).
fn str_field<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<&'a str, ProtoError> {
    let raw =
        raw.ok_or_else(|| ProtoError::new(ErrorCode::BadRequest, format!("missing field {name}")))?;
    let text = raw.get();
    if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        let inner = &text[1..text.len() - 1];
        if !inner.contains('\\') {
            return Ok(inner);
        }
        // An escaped string can only hold characters outside the id/room
        // alphabets, so it is invalid either way; say which field.
        return Ok("\\");
    }
    Err(ProtoError::new(
        ErrorCode::BadRequest,
        format!("field {name} must be a string"),
    ))
}

fn room_field(raw: Option<&RawValue>) -> Result<&str, ProtoError> {
    let room = str_field(raw, "room")?;
    if !valid_room(room) {
        return Err(ProtoError::new(ErrorCode::InvalidRoom, "invalid room name"));
    }
    Ok(room)
}

fn opt_u64(raw: Option<&RawValue>, name: &str) -> Result<Option<u64>, ProtoError> {
    match raw {
        None => Ok(None),
        Some(v) if v.get() == "null" => Ok(None),
        Some(v) => v.get().parse::<u64>().map(Some).map_err(|_| {
            ProtoError::new(
                ErrorCode::BadRequest,
                format!("field {name} must be a non-negative integer"),
            )
        }),
    }
}

/// An optional boolean flag: absent or `null` is false.
fn opt_bool(raw: Option<&RawValue>, name: &str) -> Result<bool, ProtoError> {
    match raw.map(RawValue::get) {
        None | Some("null") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("field {name} must be true or false"),
        )),
    }
}

/// A join's `presence`: `"individual"` (the default, also when absent or
/// null) or `"batched"`; anything else is `bad_request`.
fn presence_mode(raw: Option<&RawValue>) -> Result<bool, ProtoError> {
    match raw.map(RawValue::get) {
        None | Some("null") | Some("\"individual\"") => Ok(false),
        Some("\"batched\"") => Ok(true),
        Some(_) => Err(ProtoError::new(
            ErrorCode::BadRequest,
            "field presence must be \"individual\" or \"batched\"",
        )),
    }
}

fn body_field(raw: Option<&RawValue>, max_body: usize) -> Result<&str, ProtoError> {
    let body = raw.ok_or_else(|| ProtoError::new(ErrorCode::BadRequest, "missing field body"))?;
    let text = body.get();
    if text.len() > max_body {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!("body is {} bytes, over the limit of {max_body}", text.len()),
        ));
    }
    Ok(text)
}

/// `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$`
pub fn valid_room(room: &str) -> bool {
    let b = room.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'))
}

/// `^[A-Za-z0-9_.@-]{1,64}$`
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'@' | b'-'))
}

/// The DM room of two users: `dm:<smaller>:<larger>` (byte order).
pub fn dm_room(a: &str, b: &str) -> String {
    let (x, y) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    format!("dm:{x}:{y}")
}

/// The two participants of a well-formed DM room.
pub fn dm_participants(room: &str) -> Option<(&str, &str)> {
    let rest = room.strip_prefix("dm:")?;
    let (x, y) = rest.split_once(':')?;
    (valid_user(x) && valid_user(y) && x.as_bytes() < y.as_bytes()).then_some((x, y))
}

/// Writes a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is correct for every input; to_writer into a Vec
    // cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes `"id":<id>,` when the request had one.
pub fn write_id(out: &mut Vec<u8>, id: &ReqId) {
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        out.extend_from_slice(id.as_bytes());
        out.push(b',');
    }
}

/// The `error` frame payload.
pub fn error_json(
    id: &ReqId,
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + message.len());
    out.extend_from_slice(b"{\"type\":\"error\",");
    write_id(&mut out, id);
    let _ = write!(out, "\"code\":\"{}\",\"message\":", code.as_str());
    write_json_str(&mut out, message);
    if let Some(ms) = retry_after_ms {
        let _ = write!(out, ",\"retry_after_ms\":{ms}");
    }
    out.push(b'}');
    out
}

/// Fields of a `message`, written once per published message.
pub struct MessageFields<'a> {
    pub room: &'a str,
    pub seq: u64,
    pub from: &'a str,
    /// The display name as a JSON string literal (escaped once per session).
    pub name_json: &'a str,
    pub ts: u64,
    pub body: &'a str,
}

/// Length of `{"type":"message",`, the prefix a history item leaves out.
pub const MESSAGE_PREFIX_LEN: usize = 18;

/// Writes a `message` object; starts with exactly `{"type":"message",` so a
/// history item can reuse the same bytes without that prefix.
pub fn write_message(out: &mut Vec<u8>, m: &MessageFields<'_>) {
    out.extend_from_slice(b"{\"type\":\"message\",\"room\":\"");
    out.extend_from_slice(m.room.as_bytes());
    let _ = write!(out, "\",\"seq\":{},\"from\":\"", m.seq);
    out.extend_from_slice(m.from.as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    out.extend_from_slice(m.name_json.as_bytes());
    let _ = write!(out, ",\"ts\":{},\"body\":", m.ts);
    out.extend_from_slice(m.body.as_bytes());
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (ReqId, Result<Request<'_>, ProtoError>) {
        parse_request(text, 100)
    }

    #[test]
    fn parses_every_request_type() {
        assert_eq!(
            parse(r#"{"type":"ping","id":7}"#),
            (Some("7".into()), Ok(Request::Ping))
        );
        assert_eq!(
            parse(r#"{"type":"join","room":"lobby","since":5,"id":"a"}"#),
            (
                Some("\"a\"".into()),
                Ok(Request::Join {
                    room: "lobby",
                    since: Some(5),
                    reads: false,
                    batched: false
                })
            )
        );
        assert_eq!(
            parse(r#"{"type":"publish","room":"r","body":{"x": [1, 2]}}"#).1,
            Ok(Request::Publish {
                room: "r",
                body: r#"{"x": [1, 2]}"#
            })
        );
        assert_eq!(
            parse(r#"{"type":"dm","to":"bob","body":"hi"}"#).1,
            Ok(Request::Dm {
                to: "bob",
                body: "\"hi\""
            })
        );
        assert_eq!(
            parse(r#"{"type":"history","room":"r","before":10}"#).1,
            Ok(Request::History {
                room: "r",
                before: Some(10),
                after: None,
                limit: 50
            })
        );
        assert_eq!(parse(r#"{"type":"rooms"}"#).1, Ok(Request::Rooms));
        assert_eq!(
            parse(r#"{"type":"read","room":"r","seq":3}"#).1,
            Ok(Request::Read { room: "r", seq: 3 })
        );
        assert_eq!(
            parse(r#"{"type":"typing","room":"r"}"#).1,
            Ok(Request::Typing { room: "r" })
        );
        assert_eq!(
            parse(r#"{"type":"presence","room":"r"}"#).1,
            Ok(Request::Presence { room: "r" })
        );
        assert_eq!(
            parse(r#"{"type":"leave","room":"r"}"#).1,
            Ok(Request::Leave { room: "r" })
        );
    }

    #[test]
    fn body_is_verbatim_with_big_numbers() {
        let text = r#"{"type":"publish","room":"r","body":12345678901234567890123}"#;
        assert_eq!(
            parse(text).1,
            Ok(Request::Publish {
                room: "r",
                body: "12345678901234567890123"
            })
        );
    }

    #[test]
    fn errors() {
        let code = |t: &str| parse(t).1.unwrap_err().code;
        assert_eq!(code("nope"), ErrorCode::BadRequest);
        assert!(parse("nope").1.unwrap_err().unparsable);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"fly"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"join","room":5}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"join","room":"-bad"}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"join","room":"r","since":-1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"history","room":"r","limit":0}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"history","room":"r","limit":101}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"publish","room":"r"}"#),
            ErrorCode::BadRequest
        );
        let big = format!(
            r#"{{"type":"publish","room":"r","body":"{}"}}"#,
            "x".repeat(200)
        );
        assert_eq!(code(&big), ErrorCode::TooLarge);
        assert_eq!(code(r#"{"type":"ping","id":[1]}"#), ErrorCode::BadRequest);
        let long_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
        assert_eq!(code(&long_id), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"dm","to":"a b","body":1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"type":"read","room":"r"}"#), ErrorCode::BadRequest);
        // The id survives a later validation error.
        assert_eq!(parse(r#"{"type":"fly","id":9}"#).0, Some("9".into()));
        // null is a value: an invalid id, an invalid room, a valid body.
        assert_eq!(code(r#"{"type":"ping","id":null}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"join","room":null}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"type":null}"#), ErrorCode::BadRequest);
    }

    #[test]
    fn id_rule() {
        let id_of = |id: &str| {
            let frame = format!(r#"{{"type":"ping","id":{id}}}"#);
            let (got, res) = parse_request(&frame, 100);
            (
                got.map(String::from),
                res.map(|r| r == Request::Ping).map_err(|e| e.code),
            )
        };
        let ok = |id: &str| assert_eq!(id_of(id), (Some(id.to_string()), Ok(true)), "{id}");
        let bad = |id: &str| {
            assert_eq!(id_of(id), (None, Err(ErrorCode::BadRequest)), "{id}");
            // Valid JSON with an invalid id is not an unparsable frame.
            let frame = format!(r#"{{"type":"ping","id":{id}}}"#);
            let err = parse_request(&frame, 100).1.unwrap_err();
            assert!(!err.unparsable, "{id}: {err:?}");
        };
        // Integers 0..=2^53-1 in plain digits, echoed as they came.
        ok("0");
        ok("7");
        ok("9007199254740991");
        ok(&MAX_INT_ID.to_string());
        // Strings of at most 64 characters (counted unescaped), verbatim.
        ok(r#""""#);
        ok(r#""rejoin-7""#);
        ok(&format!(r#""{}""#, "x".repeat(64)));
        ok(&format!(r#""{}""#, "é".repeat(64)));
        ok(&format!(r#""{}""#, "\\u00e9".repeat(64)));
        ok(r#""a\"b\n""#);
        // Everything else is bad_request, and the error carries no id.
        bad("9007199254740992");
        bad("18446744073709551616");
        bad(&"9".repeat(5000));
        bad(&format!("1{}", "0".repeat(4999)));
        bad("-1");
        bad("-0");
        bad("1.5");
        bad("1.0");
        bad("1e3");
        bad("1E3");
        bad("true");
        bad("false");
        bad("null");
        bad("{}");
        bad(r#"{"a":1}"#);
        bad("[]");
        bad("[1]");
        bad(&format!(r#""{}""#, "x".repeat(65)));
        bad(&format!(r#""{}""#, "é".repeat(65)));
        bad(r#""\ud800""#);
        // An invalid id wins over any other error of the frame.
        let (id, res) = parse(r#"{"type":"fly","id":1.5}"#);
        assert_eq!((id, res.unwrap_err().code), (None, ErrorCode::BadRequest));
        // A valid id is echoed by the error reply of an invalid request.
        let (id, res) = parse(r#"{"type":"join","id":"j1"}"#);
        assert_eq!(id.as_deref(), Some(r#""j1""#));
        let err = res.unwrap_err();
        let v: serde_json::Value =
            serde_json::from_slice(&error_json(&id, err.code, &err.message, None)).unwrap();
        assert_eq!(v["id"], "j1");
        let (id, res) = parse(r#"{"type":"ping","id":1e3}"#);
        let err = res.unwrap_err();
        let v: serde_json::Value =
            serde_json::from_slice(&error_json(&id, err.code, &err.message, None)).unwrap();
        assert!(v.get("id").is_none(), "{v}");
        assert_eq!(v["code"], "bad_request");
    }

    #[test]
    fn null_body_and_escaped_type() {
        assert_eq!(
            parse(r#"{"type":"publish","room":"r","body":null}"#).1,
            Ok(Request::Publish {
                room: "r",
                body: "null"
            })
        );
        // The id is echoed exactly as it came, escapes included.
        assert_eq!(
            parse(r#"{"type":"p\u0069ng","id":"\u0041"}"#),
            (Some(r#""\u0041""#.into()), Ok(Request::Ping))
        );
        // Absent optional numbers and explicit nulls mean the same.
        assert_eq!(
            parse(r#"{"type":"join","room":"r","since":null}"#).1,
            Ok(Request::Join {
                room: "r",
                since: None,
                reads: false,
                batched: false
            })
        );
    }

    #[test]
    fn rate_limited_error_carries_retry_after() {
        let e = ProtoError::rate_limited(250);
        assert_eq!(e.code, ErrorCode::RateLimited);
        let v: serde_json::Value = serde_json::from_slice(&error_json(
            &Some("3".into()),
            e.code,
            &e.message,
            e.retry_after_ms,
        ))
        .unwrap();
        assert_eq!(v["retry_after_ms"], 250);
        assert_eq!(v["id"], 3);
    }

    #[test]
    fn names() {
        assert!(valid_room("a"));
        assert!(valid_room("Room_1.b:c-d"));
        assert!(valid_room(&"a".repeat(128)));
        assert!(!valid_room(&"a".repeat(129)));
        assert!(!valid_room("_a"));
        assert!(!valid_room("a b"));
        assert!(!valid_room(""));
        assert!(valid_user("a.b@c-d_e"));
        assert!(!valid_user(""));
        assert!(!valid_user(&"u".repeat(65)));
        assert_eq!(dm_room("bob", "alice"), "dm:alice:bob");
        assert_eq!(dm_participants("dm:alice:bob"), Some(("alice", "bob")));
        assert_eq!(dm_participants("dm:bob:alice"), None);
        assert_eq!(dm_participants("lobby"), None);
    }

    #[test]
    fn message_encoding_and_prefix() {
        let mut out = Vec::new();
        write_message(
            &mut out,
            &MessageFields {
                room: "r",
                seq: 3,
                from: "u",
                name_json: "\"U \\\"x\\\"\"",
                ts: 9,
                body: "{\"a\":1}",
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["name"], "U \"x\"");
        assert_eq!(v["body"]["a"], 1);
        assert_eq!(&out[..MESSAGE_PREFIX_LEN], b"{\"type\":\"message\",");
        let err = error_json(
            &Some("\"q\"".into()),
            ErrorCode::RateLimited,
            "slow down",
            Some(50),
        );
        let v: serde_json::Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(v["id"], "q");
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["retry_after_ms"], 50);
    }

    #[test]
    fn join_reads_flag_is_an_optional_boolean() {
        assert_eq!(
            parse(r#"{"type":"join","room":"r","reads":true}"#).1,
            Ok(Request::Join {
                room: "r",
                since: None,
                reads: true,
                batched: false
            })
        );
        assert!(matches!(
            parse(r#"{"type":"join","room":"r","reads":null}"#).1,
            Ok(Request::Join { reads: false, .. })
        ));
        let err = parse(r#"{"type":"join","room":"r","reads":1}"#)
            .1
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn join_presence_mode_is_individual_or_batched() {
        assert!(matches!(
            parse(r#"{"type":"join","room":"r","presence":"batched"}"#).1,
            Ok(Request::Join { batched: true, .. })
        ));
        for plain in [r#""individual""#, "null"] {
            let text = format!(r#"{{"type":"join","room":"r","presence":{plain}}}"#);
            assert!(matches!(
                parse(&text).1,
                Ok(Request::Join { batched: false, .. })
            ));
        }
        for bad in [r#""Batched""#, "true", "1", r#""diff""#] {
            let text = format!(r#"{{"type":"join","room":"r","presence":{bad}}}"#);
            assert_eq!(parse(&text).1.unwrap_err().code, ErrorCode::BadRequest);
        }
    }
}
