//! permessage-deflate: arbitrary compressed payloads inflate within the
//! bound or fail cleanly (never a panic, never more than `max + 1` bytes
//! held), and arbitrary messages survive a compress/inflate round trip.
#![no_main]

use corechat_wire::deflate::{Deflater, Inflater};
use corechat_wire::extension;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // Inflating hostile input, with and without context, twice in a row.
    let mut inflater = Inflater::new();
    let reset = flags & 1 != 0;
    for _ in 0..2 {
        let mut out = Vec::new();
        let _ = inflater.inflate(rest, &mut out, MAX, reset);
        assert!(out.len() <= MAX + 1 && out.capacity() <= MAX + 1);
    }
    // Round trip of the bytes as a message, with the window the flags pick.
    let bits = 8 + (flags >> 5);
    let mut deflater = Deflater::new(bits);
    let mut fresh = Inflater::new();
    for _ in 0..2 {
        let mut z = Vec::new();
        deflater.compress(rest, &mut z, reset);
        let mut out = Vec::new();
        fresh
            .inflate(&z, &mut out, rest.len(), reset)
            .expect("our own output inflates");
        assert_eq!(out, rest);
    }
    // The offer parser on the same bytes as text.
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Some((params, response)) = extension::negotiate(text, data.len() % 2 == 0) {
            assert_eq!(extension::parse_response(&response), Some(params));
        }
    }
});
