//! The upgrade path up to the session: an arbitrary request is parsed, its
//! extension offer negotiated, its key checked and its token (query or
//! bearer) verified as a JWT, as the reactor and the chat's authenticate
//! do. No panic anywhere.
#![no_main]

use corechat::auth::Authenticator;
use corechat::http::parse_request;
use corechat_wire::extension;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| Authenticator::new(Some(b"fuzz-secret"), None, 30).expect("authenticator"))
}

fuzz_target!(|data: &[u8]| {
    let auth = authenticator();
    // The bytes as a raw token too: the JWT parser alone.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = auth.verify(text, 1_700_000_000);
    }
    let Ok(Some((req, _))) = parse_request(data) else {
        return;
    };
    if let Some(offer) = req.ws_extensions.as_deref() {
        let _ = extension::negotiate(offer, true);
    }
    let _ = req.ws_key_valid();
    if let Some(token) = req.query_param("token").or(req.bearer().map(str::to_owned)) {
        let _ = auth.verify(&token, 1_700_000_000);
    }
});
