//! permessage-deflate negotiation (RFC 7692 section 7): the server's choice
//! among a client's offers in `Sec-WebSocket-Extensions`, and the client's
//! check of the server's answer. Plain text handling, no compression here
//! (that is [`crate::deflate`]).
//!
//! The server's policy: it always compresses its own messages without
//! context takeover (`server_no_context_takeover`), so one compressed frame
//! can be shared by every connection that negotiated the extension. By
//! default it also answers `client_no_context_takeover`, offered or not
//! (RFC 7692 7.1.1.1 lets a server require it), so no connection needs an
//! inflate window of its own (32 KiB that could never be freed while the
//! connection lives); a server that prefers the client's better ratio over
//! that memory keeps the client's window when the client did not ask
//! otherwise.
//! An offer it cannot read (unknown or repeated parameter, bad value) is
//! declined: the next offer is tried, and without one the connection simply
//! runs uncompressed.

/// The extension's registered name.
pub const NAME: &str = "permessage-deflate";

/// The agreed parameters of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// LZ77 window (bits) the server's compressor may use (8-15).
    pub server_max_window_bits: u8,
    /// LZ77 window (bits) the client's compressor may use (8-15).
    pub client_max_window_bits: u8,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

/// One offer's parameters as written, before the server's policy applies.
#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value (the client supports it).
    client_max_window_bits: Option<Option<u8>>,
}

/// Splits a header value into extensions (`,`), each into its name and
/// parameters (`;`). A quoted comma or semicolon is not supported: no
/// permessage-deflate value needs one, so such an offer fails to parse.
fn extensions(header: &str) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> {
    header.split(',').map(|ext| {
        let mut parts = ext.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        (name, parts)
    })
}

/// A window size parameter value: 8 to 15, no leading zero, optionally in
/// double quotes (RFC 7692 7.1.2: a quoted-string must unquote to a token).
fn window_bits(value: &str) -> Option<u8> {
    let v = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    match v.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// Reads one offer's parameters; `None` if any is unknown, repeated or
/// has a bad value (the offer is then declined).
fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (param, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true
            }
            ("client_no_context_takeover", None) if !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true
            }
            ("server_max_window_bits", Some(v)) if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(v)?)
            }
            ("client_max_window_bits", v) if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match v {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                })
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// The server's side: the first acceptable permessage-deflate offer among
/// the `Sec-WebSocket-Extensions` values (several headers joined by `,`),
/// as the agreed parameters and the response header value.
/// `keep_client_context`: let a client that did not offer
/// `client_no_context_takeover` keep its window (the server then holds an
/// inflate window for it).
pub fn negotiate(header: &str, keep_client_context: bool) -> Option<(Params, String)> {
    for (name, params) in extensions(header) {
        if !name.eq_ignore_ascii_case(NAME) {
            continue;
        }
        let Some(offer) = parse_offer(params) else {
            continue;
        };
        let params = Params {
            server_no_context_takeover: true,
            client_no_context_takeover: offer.client_no_context_takeover || !keep_client_context,
            server_max_window_bits: offer.server_max_window_bits.unwrap_or(15),
            client_max_window_bits: offer.client_max_window_bits.flatten().unwrap_or(15),
        };
        return Some((params, response(&params, &offer)));
    }
    None
}

/// The response value for an accepted offer: the parameters the offer
/// requires echoed, plus the server's own `server_no_context_takeover`.
fn response(params: &Params, offer: &Offer) -> String {
    let mut out = String::from(NAME);
    out.push_str("; server_no_context_takeover");
    if params.client_no_context_takeover {
        out.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = offer.server_max_window_bits {
        out.push_str(&format!("; server_max_window_bits={bits}"));
    }
    if let Some(Some(bits)) = offer.client_max_window_bits {
        out.push_str(&format!("; client_max_window_bits={bits}"));
    }
    out
}

/// A client's offer that asks for no context takeover on both sides (what
/// the load generator and the tests send): neither end keeps a window.
pub const OFFER_NO_CONTEXT: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The client's side: the parameters of a server's response value, `None`
/// if it is not a valid permessage-deflate response (the client must then
/// fail the connection, RFC 7692 5).
pub fn parse_response(header: &str) -> Option<Params> {
    let mut exts = extensions(header);
    let (name, params) = exts.next()?;
    if !name.eq_ignore_ascii_case(NAME) || exts.next().is_some() {
        return None;
    }
    let offer = parse_offer(params)?;
    Some(Params {
        server_no_context_takeover: offer.server_no_context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover,
        server_max_window_bits: offer.server_max_window_bits.unwrap_or(15),
        // A response must carry a value if it names the parameter.
        client_max_window_bits: match offer.client_max_window_bits {
            Some(None) => return None,
            Some(Some(b)) => b,
            None => 15,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_offer_is_accepted_without_context_takeover_for_the_server() {
        let (p, resp) = negotiate("permessage-deflate", true).unwrap();
        assert!(p.server_no_context_takeover && !p.client_no_context_takeover);
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover");
        assert_eq!(parse_response(&resp), Some(p));
    }

    #[test]
    fn browser_offer_with_bare_client_window_bits() {
        let (p, resp) = negotiate("permessage-deflate; client_max_window_bits", true).unwrap();
        assert_eq!(p.client_max_window_bits, 15);
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover");
    }

    #[test]
    fn by_default_the_client_is_told_to_drop_its_context() {
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_no_context_takeover",
        ] {
            let (p, resp) = negotiate(offer, false).unwrap();
            assert!(p.client_no_context_takeover, "{offer}");
            assert!(resp.contains("; client_no_context_takeover"), "{resp}");
            assert_eq!(parse_response(&resp), Some(p));
        }
    }

    #[test]
    fn parameters_are_echoed_as_required() {
        let (p, resp) = negotiate(
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=\"10\"; client_max_window_bits=9",
            true,
        )
        .unwrap();
        assert_eq!(
            p,
            Params {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 10,
                client_max_window_bits: 9,
            }
        );
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"
        );
        assert_eq!(parse_response(&resp), Some(p));
    }

    #[test]
    fn malformed_offers_are_declined_and_the_next_one_is_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"10",
            "x-webkit-deflate-frame",
            "",
            ";;;,,,",
        ] {
            assert_eq!(negotiate(bad, false), None, "{bad:?}");
        }
        let (p, _) = negotiate(
            "permessage-deflate; bogus, permessage-deflate; client_no_context_takeover",
            true,
        )
        .unwrap();
        assert!(p.client_no_context_takeover);
    }

    #[test]
    fn responses_the_client_must_refuse() {
        assert_eq!(
            parse_response("permessage-deflate; client_max_window_bits"),
            None
        );
        assert_eq!(
            parse_response("permessage-deflate, permessage-deflate"),
            None
        );
        assert_eq!(parse_response("foo"), None);
        let p = parse_response(OFFER_NO_CONTEXT).unwrap();
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
    }
}
