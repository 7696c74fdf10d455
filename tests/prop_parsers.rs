//! Properties of every parser that sees untrusted bytes, run in the normal
//! suite (the fuzz targets in `fuzz/` search the same code for longer):
//! server frames and compressed frames round-trip, DEFLATE round-trips and
//! never expands past its bound, the HTTP parser round-trips valid requests
//! and never panics, the chat request parser accepts valid requests and
//! never panics, and the extension and JWT parsers never panic.

use corechat::auth::Authenticator;
use corechat::http::parse_request;
use corechat::protocol::{self, Request};
use corechat::ws::{self, OpCode, Parse};
use corechat_wire::deflate::{Deflater, InflateError, Inflater};
use corechat_wire::{extension, parse_header_ext, Role};
use proptest::prelude::*;
use serde_json::json;

fn data_opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![Just(OpCode::Text), Just(OpCode::Binary)]
}

/// Bytes that compress well (repeats) or not at all (noise).
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2000),
        (prop::collection::vec(any::<u8>(), 1..16), 0usize..5000).prop_map(|(unit, n)| unit
            .iter()
            .cycle()
            .take(n)
            .copied()
            .collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn server_frames_round_trip_plain_and_compressed(op in data_opcode(), payload in message()) {
        let plain = ws::frame(op, &payload);
        let Ok(Parse::Frame(h)) = parse_header_ext(&plain, usize::MAX, Role::Server, false) else {
            return Err(TestCaseError::fail("plain frame did not parse"));
        };
        prop_assert_eq!((h.opcode, h.rsv1, h.fin), (op, false, true));
        prop_assert_eq!(h.payload(&plain), &payload[..]);

        let zipped = ws::compressed_frame(&mut Deflater::new(15), op, &payload);
        // A peer that did not negotiate refuses RSV1.
        prop_assert!(parse_header_ext(&zipped, usize::MAX, Role::Server, false).is_err());
        let Ok(Parse::Frame(h)) = parse_header_ext(&zipped, usize::MAX, Role::Server, true) else {
            return Err(TestCaseError::fail("compressed frame did not parse"));
        };
        prop_assert_eq!((h.opcode, h.rsv1, h.total_len()), (op, true, zipped.len()));
        let mut out = Vec::new();
        Inflater::new().inflate(h.payload(&zipped), &mut out, payload.len(), true).unwrap();
        prop_assert_eq!(out, payload);
    }

    #[test]
    fn deflate_round_trips_with_and_without_context(
        msgs in prop::collection::vec(message(), 1..4),
        reset in any::<bool>(),
        bits in 8u8..=15,
    ) {
        let mut d = Deflater::new(bits);
        let mut i = Inflater::new();
        for m in &msgs {
            let mut z = Vec::new();
            d.compress(m, &mut z, reset);
            let mut out = Vec::new();
            i.inflate(&z, &mut out, m.len(), reset).unwrap();
            prop_assert_eq!(&out, m);
        }
    }

    #[test]
    fn inflate_never_holds_more_than_its_bound(m in message(), max in 0usize..3000) {
        let mut z = Vec::new();
        Deflater::new(15).compress(&m, &mut z, true);
        let mut out = Vec::new();
        let r = Inflater::new().inflate(&z, &mut out, max, true);
        prop_assert!(out.capacity() <= max + 1, "capacity {} for max {}", out.capacity(), max);
        if m.len() > max {
            prop_assert_eq!(r, Err(InflateError::TooBig));
        } else {
            prop_assert_eq!(r, Ok(()));
            prop_assert_eq!(out, m);
        }
    }

    #[test]
    fn inflate_of_garbage_fails_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..600), reset in any::<bool>()) {
        let mut i = Inflater::new();
        for _ in 0..2 {
            let mut out = Vec::new();
            let _ = i.inflate(&bytes, &mut out, 1000, reset);
            prop_assert!(out.capacity() <= 1001);
        }
    }

    #[test]
    fn http_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(Some((_, used))) = parse_request(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn http_parser_round_trips_valid_requests(
        method in prop::sample::select(vec!["GET", "POST", "HEAD", "DELETE"]),
        path in "/[a-z0-9/_.-]{0,40}",
        query in "[a-z]{1,8}=[a-zA-Z0-9]{0,12}",
        origin in proptest::option::of("https?://[a-z]{1,12}(:[0-9]{2,5})?"),
        extensions in proptest::option::of("permessage-deflate(; client_no_context_takeover)?"),
        body in "[ -~]{0,200}",
        trailing in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut raw = format!("{method} {path}?{query} HTTP/1.1\r\nHost: x\r\n");
        if let Some(o) = &origin {
            raw.push_str(&format!("Origin: {o}\r\n"));
        }
        if let Some(e) = &extensions {
            raw.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        let whole = raw.len();
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(&trailing);
        let Ok(Some((req, used))) = parse_request(&bytes) else {
            return Err(TestCaseError::fail("valid request refused"));
        };
        prop_assert_eq!(used, whole);
        prop_assert_eq!(req.method, method);
        prop_assert_eq!(req.path, path);
        prop_assert_eq!(req.query, query);
        prop_assert_eq!(req.origin, origin);
        prop_assert_eq!(req.ws_extensions, extensions);
        prop_assert_eq!(req.body, body.into_bytes());
        // Every proper prefix is incomplete, never an error.
        for cut in [0, whole / 3, whole - 1] {
            prop_assert!(matches!(parse_request(&bytes[..cut]), Ok(None)));
        }
    }

    #[test]
    fn protocol_parser_never_panics(text in ".{0,300}", max_body in 0usize..100) {
        let _ = protocol::parse_request(&text, max_body);
    }

    #[test]
    fn protocol_parser_never_panics_on_near_json(
        ty in prop::sample::select(vec!["join", "leave", "publish", "dm", "history", "rooms", "presence", "typing", "read", "ping", "x"]),
        room in ".{0,20}",
        body in any::<Option<String>>(),
        num in any::<i64>(),
    ) {
        let v = json!({"type": ty, "room": room, "body": body, "to": room, "seq": num, "since": num, "limit": num, "id": num});
        let _ = protocol::parse_request(&v.to_string(), 16 * 1024);
    }

    #[test]
    fn protocol_parser_accepts_valid_requests(
        room in "[A-Za-z0-9][A-Za-z0-9_.:-]{0,40}",
        user in "[A-Za-z0-9_.@-]{1,30}",
        body in ".{0,200}",
        seq in 0u64..1 << 53,
        id in 0u64..1 << 53,
        limit in 1u64..=100,
    ) {
        let body_json = serde_json::to_string(&body).unwrap();
        let cases = [
            (json!({"type": "join", "room": room, "since": seq, "id": id}), Request::Join { room: &room, since: Some(seq), reads: false, batched: false }),
            (json!({"type": "leave", "room": room, "id": id}), Request::Leave { room: &room }),
            (json!({"type": "publish", "room": room, "body": body, "id": id}), Request::Publish { room: &room, body: &body_json }),
            (json!({"type": "dm", "to": user, "body": body, "id": id}), Request::Dm { to: &user, body: &body_json }),
            (json!({"type": "history", "room": room, "before": seq, "limit": limit, "id": id}), Request::History { room: &room, before: Some(seq), after: None, limit: limit as usize }),
            (json!({"type": "read", "room": room, "seq": seq, "id": id}), Request::Read { room: &room, seq }),
            (json!({"type": "typing", "room": room}), Request::Typing { room: &room }),
            (json!({"type": "rooms", "id": id}), Request::Rooms),
            (json!({"type": "ping"}), Request::Ping),
        ];
        for (v, want) in cases {
            let text = v.to_string();
            let (got_id, got) = protocol::parse_request(&text, 16 * 1024);
            prop_assert_eq!(got, Ok(want), "{}", text);
            if v.get("id").is_some() {
                let id_text = id.to_string();
                prop_assert_eq!(got_id.as_deref(), Some(id_text.as_str()));
            }
        }
    }

    #[test]
    fn extension_negotiation_never_panics_and_answers_what_it_parses(offer in ".{0,120}") {
        if let Some((params, response)) = extension::negotiate(&offer, false) {
            prop_assert!(params.server_no_context_takeover);
            prop_assert_eq!(extension::parse_response(&response), Some(params));
        }
        let _ = extension::parse_response(&offer);
    }

    #[test]
    fn extension_offers_with_any_valid_parameters_are_accepted(
        snct in any::<bool>(),
        cnct in any::<bool>(),
        smwb in proptest::option::of(8u8..=15),
        cmwb in proptest::option::of(proptest::option::of(8u8..=15)),
    ) {
        let mut offer = String::from("permessage-deflate");
        if snct { offer.push_str("; server_no_context_takeover"); }
        if cnct { offer.push_str("; client_no_context_takeover"); }
        if let Some(b) = smwb { offer.push_str(&format!("; server_max_window_bits={b}")); }
        match cmwb {
            Some(Some(b)) => offer.push_str(&format!("; client_max_window_bits=\"{b}\"")),
            Some(None) => offer.push_str("; client_max_window_bits"),
            None => {}
        }
        let Some((p, _)) = extension::negotiate(&offer, true) else {
            return Err(TestCaseError::fail(format!("declined {offer}")));
        };
        prop_assert_eq!(p.client_no_context_takeover, cnct);
        let (p, _) = extension::negotiate(&offer, false).unwrap();
        prop_assert!(p.client_no_context_takeover);
        prop_assert_eq!(p.server_max_window_bits, smwb.unwrap_or(15));
        prop_assert_eq!(p.client_max_window_bits, cmwb.flatten().unwrap_or(15));
    }

    #[test]
    fn jwt_verify_never_panics(token in "[A-Za-z0-9_.=-]{0,200}", junk in ".{0,100}") {
        let auth = Authenticator::new(Some(b"prop-secret"), None, 30).unwrap();
        let _ = auth.verify(&token, 1_700_000_000);
        let _ = auth.verify(&junk, 1_700_000_000);
        // A valid token with one character changed is refused, not a panic.
        let good = auth.mint("u1", Some("U"), Some(3600), None, false, 1_700_000_000).unwrap();
        prop_assert!(auth.verify(&good, 1_700_000_000).is_ok());
        if !junk.is_empty() {
            let mut bad = good.clone();
            let at = junk.len() % bad.len();
            bad.replace_range(at..at + 1, if &bad[at..at + 1] == "A" { "B" } else { "A" });
            prop_assert!(auth.verify(&bad, 1_700_000_000).is_err());
        }
    }
}
