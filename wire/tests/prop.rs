//! Properties of the codec: what either end encodes, the other end parses back
//! exactly; and no input makes a parser panic or claim bytes it does not have.

use corechat_wire::{
    apply_mask, check_close_payload, close_code, header_len, parse_frame, parse_header, put_header,
    Assembler, OpCode, Parse, Role,
};
use proptest::prelude::*;

fn opcode() -> impl Strategy<Value = OpCode> {
    prop::sample::select(OpCode::ALL.to_vec())
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Server)]
}

/// Payloads around every length-encoding boundary: random bytes for short
/// ones, a cheap pattern for the 16- and 64-bit lengths.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..300),
        1 => (65_530usize..65_542, any::<u8>())
            .prop_map(|(n, seed)| (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()),
    ]
}

proptest! {
    #[test]
    fn rsv1_is_reported_only_on_a_first_data_frame_where_allowed(
        op in opcode(),
        fin in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..125),
        mask in any::<[u8; 4]>(),
        sender in role(),
    ) {
        let fin = fin || op.is_control();
        let mask = sender.masks().then_some(mask);
        let mut raw = vec![0u8; corechat_wire::MAX_HEADER_LEN];
        let n = corechat_wire::write_header_ext(&mut raw, fin, true, op, payload.len(), mask);
        raw.truncate(n);
        raw.extend_from_slice(&payload);
        prop_assert!(parse_header(&raw, usize::MAX, sender).is_err());
        let parsed = corechat_wire::parse_header_ext(&raw, usize::MAX, sender, true);
        if op.is_control() || op == OpCode::Continuation {
            prop_assert_eq!(parsed.unwrap_err().code, close_code::PROTOCOL);
        } else {
            let Ok(Parse::Frame(h)) = parsed else {
                return Err(TestCaseError::fail(format!("{parsed:?}")));
            };
            prop_assert!(h.rsv1);
            prop_assert_eq!((h.fin, h.opcode, h.payload_len), (fin, op, payload.len()));
        }
        // RSV2 and RSV3 stay errors even where RSV1 is allowed.
        raw[0] |= 0x20;
        prop_assert!(corechat_wire::parse_header_ext(&raw, usize::MAX, sender, true).is_err());
    }

    #[test]
    fn encode_then_parse_round_trips(
        op in opcode(),
        fin in any::<bool>(),
        payload in payload(),
        mask in any::<[u8; 4]>(),
        sender in role(),
    ) {
        // Control frames are never fragmented and carry at most 125 bytes.
        let (fin, payload) = if op.is_control() {
            (true, &payload[..payload.len().min(125)])
        } else {
            (fin, &payload[..])
        };
        let mask = sender.masks().then_some(mask);
        let mut raw = Vec::new();
        put_header(&mut raw, fin, op, payload.len(), mask);
        prop_assert_eq!(raw.len(), header_len(payload.len(), mask.is_some()));
        let start = raw.len();
        raw.extend_from_slice(payload);
        if let Some(m) = mask {
            apply_mask(&mut raw[start..], m);
        }
        let encoded = raw.clone();

        let parsed = parse_frame(&mut raw, payload.len(), sender);
        let Ok(Parse::Frame(h)) = parsed else {
            return Err(TestCaseError::fail(format!("{parsed:?}")));
        };
        prop_assert_eq!(h.fin, fin);
        prop_assert_eq!(h.opcode, op);
        prop_assert_eq!(h.payload_start, start);
        prop_assert_eq!(h.total_len(), encoded.len());
        prop_assert_eq!(h.payload(&raw), payload);

        // The other end's rules reject it; a tighter bound reports too big.
        let other = if sender == Role::Client { Role::Server } else { Role::Client };
        prop_assert_eq!(
            parse_header(&encoded, usize::MAX, other).unwrap_err().code,
            close_code::PROTOCOL
        );
        if !payload.is_empty() {
            prop_assert_eq!(
                parse_header(&encoded, payload.len() - 1, sender).unwrap_err().code,
                close_code::TOO_BIG
            );
        }
        // Every strict prefix is incomplete, naming the full size once known.
        let cuts = (0..encoded.len().min(20)).chain(encoded.len().saturating_sub(3)..encoded.len());
        for cut in cuts {
            match parse_header(&encoded[..cut], usize::MAX, sender) {
                Ok(Parse::Incomplete { needed }) => {
                    prop_assert!(needed == 0 || needed == encoded.len(), "cut {}: {}", cut, needed);
                    prop_assert_eq!(needed == encoded.len(), cut >= start);
                }
                other => return Err(TestCaseError::fail(format!("cut {cut}: {other:?}"))),
            }
        }
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        max in prop_oneof![0usize..200, Just(usize::MAX)],
        sender in role(),
    ) {
        let mut buf = bytes.clone();
        match parse_frame(&mut buf, max, sender) {
            Ok(Parse::Frame(h)) => {
                prop_assert!(h.total_len() <= bytes.len());
                prop_assert!(h.payload_len <= max);
                prop_assert!(h.payload_start >= header_len(h.payload_len, sender.masks()));
                if h.opcode.is_control() {
                    prop_assert!(h.fin && h.payload_len <= 125);
                }
                // Unmasking touched the payload only.
                prop_assert_eq!(&buf[..h.payload_start], &bytes[..h.payload_start]);
                prop_assert_eq!(&buf[h.total_len()..], &bytes[h.total_len()..]);
            }
            Ok(Parse::Incomplete { needed }) => {
                prop_assert!(needed == 0 || needed > bytes.len());
                prop_assert_eq!(&buf, &bytes);
            }
            Err(e) => {
                prop_assert!(matches!(e.code, close_code::PROTOCOL | close_code::TOO_BIG));
            }
        }
        // The other validators take any bytes too.
        let _ = check_close_payload(&bytes);
        if let Ok(mut asm) = Assembler::start(OpCode::Text, &bytes[..bytes.len() / 2], 48) {
            let _ = asm.extend(&bytes[bytes.len() / 2..], 48);
            let _ = asm.finish();
        }
    }
}
