//! The common case of a room message, parsed in one pass from the cached positions of its
//! fields: `"seq":` at a known offset from the start (constant per room and server), and the
//! body this load generator wrote (`{"t":<ns>,"w":<window>,...}`) at a known offset from the
//! end (constant while the body size is). Each number is read with fixed-size loads, with no
//! loop and one bounds check per field; anything unexpected (a stale position, spaces, a
//! number of unusual length, a short frame) returns `None` and the frame goes through the
//! general parser, which also refreshes the positions.

use crate::proto::{digit_prefix, POW10};

/// `(seq, send time ns, window)` of a message whose seq value starts at `seq_at` and whose
/// body's `"t":` key starts `t_back` bytes before the end; `None` if the frame does not
/// have exactly that shape.
#[inline(always)]
pub fn at_hints(p: &[u8], seq_at: usize, t_back: usize) -> Option<(u64, u64, u32)> {
    // `"seq":` and up to 7 digits (the 8-byte load must see the end of the number)
    let s: &[u8; 14] = p.get(seq_at.checked_sub(6)?..seq_at + 8)?.try_into().ok()?;
    if s[..6] != *b"\"seq\":" {
        return None;
    }
    let (seq, n) = digit_prefix(u64::from_le_bytes(s[6..].try_into().ok()?));
    if n == 0 || n == 8 {
        return None;
    }
    // `"t":`, 9..=15 digits, `,"w":`, up to 7 digits: at most 4 + 15 + 5 + 8 bytes
    let i = p.len().checked_sub(t_back)?;
    let b: &[u8; 32] = p.get(i..i + 32)?.try_into().ok()?;
    if b[..4] != *b"\"t\":" {
        return None;
    }
    let (hi, n1) = digit_prefix(u64::from_le_bytes(b[4..12].try_into().ok()?));
    let (lo, n2) = digit_prefix(u64::from_le_bytes(b[12..20].try_into().ok()?));
    if n1 != 8 || n2 == 0 || n2 == 8 {
        return None;
    }
    let t = hi * POW10[n2] + lo;
    let k = 12 + n2;
    if b[k..k + 5] != *b",\"w\":" {
        return None;
    }
    let (w, nw) = digit_prefix(u64::from_le_bytes(b[k + 5..k + 13].try_into().ok()?));
    if nw == 0 || nw == 8 {
        return None;
    }
    Some((seq, t, w as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{body, Classifier, In, Target};

    fn msg(room: &str, seq: u64, t: u64, w: u32, body_len: usize) -> Vec<u8> {
        let mut m =
            format!(r#"{{"type":"message","room":"{room}","seq":{seq},"from":"u","ts":1,"body":"#)
                .into_bytes();
        body(&mut m, false, t, w, body_len);
        m.push(b'}');
        m
    }

    /// The general parser's answer (no hints), and the hints it leaves behind.
    fn general(p: &[u8]) -> (In<'static>, u16, u32) {
        let c = Classifier::new(Target::Corechat);
        let (mut sh, mut th) = (0u16, 0u32);
        let r = match c.classify_hinted(p, &mut sh, &mut th) {
            In::Message { seq, tw } => In::Message { seq, tw },
            other => panic!("{other:?}"),
        };
        (r, sh, th)
    }

    #[test]
    fn agrees_with_the_general_parser_or_declines() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut fast = 0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = x % 10u64.pow((x % 10) as u32 + 1);
            let t = x % 10u64.pow((x >> 8) as u32 % 19 + 1);
            let w = (x >> 20) as u32 % [1, 10, 1000, 100_000_000][(x >> 40) as usize % 4];
            let body_len = [0, 20, 64, 200][(x >> 50) as usize % 4];
            let room = ["r", "lg-room-0", "lg-room-12345"][(x >> 56) as usize % 3];
            let m = msg(room, seq, t, w, body_len);
            let (want, sh, th) = general(&m);
            assert_eq!(
                want,
                In::Message {
                    seq: Some(seq),
                    tw: Some((t, w))
                }
            );
            if let Some((s, tt, ww)) = at_hints(&m, sh as usize, th as usize) {
                fast += 1;
                assert_eq!((s, tt, ww), (seq, t, w), "{}", String::from_utf8_lossy(&m));
            }
            // the classifier with those hints gives the general answer, fast path or not
            let c = Classifier::new(Target::Corechat);
            let (mut sh2, mut th2) = (sh, th);
            assert_eq!(c.classify_hinted(&m, &mut sh2, &mut th2), want);
        }
        // typical shapes (7-digit seqs, 13-digit times, 64-byte bodies) take the fast path
        assert!(fast > 1000, "{fast}");
        let m = msg("lg-room-0", 1234, 1_700_000_000_123, 3, 64);
        let (_, sh, th) = general(&m);
        assert_eq!(
            at_hints(&m, sh as usize, th as usize),
            Some((1234, 1_700_000_000_123, 3))
        );
    }

    #[test]
    fn declines_stale_hints_and_unexpected_shapes() {
        let m = msg("lg-room-0", 77, 1_700_000_000_123, 2, 64);
        let (_, sh, th) = general(&m);
        let (sh, th) = (sh as usize, th as usize);
        assert!(at_hints(&m, sh, th).is_some());
        // positions off by one either way, or out of range
        for (a, b) in [
            (sh + 1, th),
            (sh - 1, th),
            (sh, th + 1),
            (sh, th - 1),
            (0, th),
            (sh, 0),
        ] {
            assert_eq!(at_hints(&m, a, b), None, "{a} {b}");
        }
        assert_eq!(at_hints(&m, 5000, th), None);
        assert_eq!(at_hints(&m, sh, 5000), None);
        assert_eq!(at_hints(&m[..40], sh, th), None);
        // a space after the key, an 8-digit seq, a missing window: left to the general parser
        let spaced = String::from_utf8(m.clone())
            .unwrap()
            .replace("\"seq\":77", "\"seq\": 77");
        assert_eq!(at_hints(spaced.as_bytes(), sh, th), None);
        let long = msg("lg-room-0", 12_345_678, 1_700_000_000_123, 2, 64);
        assert_eq!(at_hints(&long, sh, th), None);
        let no_w = String::from_utf8(m)
            .unwrap()
            .replace(",\"w\":2", ",\"x\":2");
        assert_eq!(at_hints(no_w.as_bytes(), sh, th), None);
    }
}
