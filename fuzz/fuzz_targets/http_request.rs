//! The HTTP/1.1 request parser on arbitrary bytes: no panic, and what it
//! reports consumed lies within the input.
#![no_main]

use corechat::http::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, used))) = parse_request(data) {
        assert!(used <= data.len());
        let _ = req.ws_key_valid();
        let _ = req.bearer();
        let _ = req.query_param("token");
    }
});
