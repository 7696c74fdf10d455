//! The chat request parser (PROTOCOL.md) on arbitrary text: no panic.
#![no_main]

use corechat::protocol::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_request(text, 16 * 1024);
        let _ = parse_request(text, 4);
    }
});
