//! JWT verification and minting (PROTOCOL.md section 2).
//!
//! One `Authenticator` is built at start and shared by every reactor thread;
//! all key parsing happens in `new` so `verify` stays cheap on the accept path.
//! Verification is done here rather than by `jsonwebtoken::decode`, which
//! re-parses an RSA public key on every call (and copies the key, parses the
//! header twice and the claims twice); `jsonwebtoken` still reads the PEM
//! files and mints tokens.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rand::Rng;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// Longest user id / display name, in characters.
pub const MAX_ID_LEN: usize = 64;
/// Guest tokens live 30 days.
pub const GUEST_TTL_SECS: u64 = 30 * 24 * 3600;
/// Tokens longer than this are refused before any decoding work (cheap DoS guard).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Smallest RSA modulus accepted for RS256.
const MIN_RSA_BITS: usize = 2048;
/// Default leeway for `exp` and `nbf` (`--jwt-leeway-s`).
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Why a token was refused. `Display` is sent to clients in the 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    // Static strings: a flood of bad tokens must not cost allocations.
    #[error("invalid claims: {0}")]
    InvalidClaims(&'static str),
    #[error("invalid name: {0}")]
    BadName(&'static str),
    /// Server-side key problem (startup), never caused by a client token.
    #[error("invalid key: {0}")]
    Key(String),
    #[error("cannot mint tokens: no HS256 secret configured")]
    NoSecret,
}

/// An authenticated user, as taken from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: Arc<str>,
    pub name: Arc<str>,
    /// The second from which the token is refused: its `exp` claim plus the
    /// authenticator's leeway. A connection open at that second is closed.
    pub exp: Option<u64>,
    /// `None`: every public room.
    pub rooms: Option<Arc<[String]>>,
    pub admin: bool,
    /// A guest token (claim `guest: true`, as `mint_guest` makes).
    pub guest: bool,
}

impl Identity {
    /// May this user read or join `room`?
    ///
    /// DM rooms (`dm:<x>:<y>`, x <= y in byte order) are open only to x and y,
    /// whatever the room patterns say; a non-canonical `dm:` name is refused.
    pub fn may_access(&self, room: &str) -> bool {
        if let Some(pair) = room.strip_prefix("dm:") {
            return match pair.split_once(':') {
                Some((x, y)) => {
                    valid_user_id(x)
                        && valid_user_id(y)
                        && x <= y
                        && (*self.user == *x || *self.user == *y)
                }
                None => false,
            };
        }
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| pattern_matches(p, room)),
        }
    }
}

/// Exact match, or prefix match when the pattern ends in `*`.
fn pattern_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// `^[A-Za-z0-9_.@-]{1,64}$`
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A verification key, parsed once.
enum VerifyKey {
    /// HMAC state already keyed with the secret; cloned per verify.
    Hs256(Hmac<Sha256>),
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Es256(p256::ecdsa::VerifyingKey),
}

impl VerifyKey {
    fn algorithm(&self) -> Algorithm {
        match self {
            VerifyKey::Hs256(_) => Algorithm::HS256,
            VerifyKey::Rs256(_) => Algorithm::RS256,
            VerifyKey::Es256(_) => Algorithm::ES256,
        }
    }

    /// Whether `signature` signs `message` (HMAC compared in constant time).
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            VerifyKey::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(message);
                mac.verify_slice(signature).is_ok()
            }
            VerifyKey::Rs256(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
            VerifyKey::Es256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
        }
    }
}

/// One accepted algorithm with its prepared key.
struct Verifier {
    alg: Algorithm,
    key: VerifyKey,
}

/// Verifies (and, with a secret, mints) tokens. Build once, share via `Arc`.
pub struct Authenticator {
    verifiers: Vec<Verifier>,
    signer: Option<EncodingKey>,
    /// Tolerated clock skew for `exp` and `nbf`, in seconds.
    leeway_secs: u64,
}

impl std::fmt::Debug for Authenticator {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<Algorithm> = self.verifiers.iter().map(|v| v.alg).collect();
        f.debug_struct("Authenticator")
            .field("algorithms", &algs)
            .field("can_mint", &self.signer.is_some())
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// Claims as sent by the issuer; loosely typed so a wrong type gets a precise error.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    rooms: Option<Value>,
    #[serde(default)]
    admin: Option<Value>,
    #[serde(default)]
    guest: Option<Value>,
}

/// The JOSE header; only `alg` matters (an unknown `alg`, `none` included,
/// makes the token malformed).
#[derive(Deserialize)]
struct JoseHeader {
    alg: Algorithm,
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    guest: bool,
}

impl Authenticator {
    /// `hs256_secret` enables HS256 (and minting); `public_key_pem` enables
    /// RS256 (RSA key) or ES256 (P-256 key). At least one is required, and only
    /// the configured algorithms are accepted. `leeway_secs` is the clock skew
    /// tolerated for `exp` and `nbf` (`Config::jwt_leeway_s`).
    pub fn new(
        hs256_secret: Option<&[u8]>,
        public_key_pem: Option<&[u8]>,
        leeway_secs: u64,
    ) -> Result<Self, AuthError> {
        let mut verifiers = Vec::with_capacity(2);
        let mut signer = None;
        if let Some(secret) = hs256_secret {
            if secret.is_empty() {
                return Err(AuthError::Key("the HS256 secret is empty".into()));
            }
            let mac = Hmac::<Sha256>::new_from_slice(secret)
                .map_err(|e| AuthError::Key(format!("HS256 secret: {e}")))?;
            verifiers.push(Verifier::new(VerifyKey::Hs256(mac)));
            signer = Some(EncodingKey::from_secret(secret));
        }
        if let Some(pem) = public_key_pem {
            verifiers.push(Verifier::new(parse_public_key(pem)?));
        }
        if verifiers.is_empty() {
            return Err(AuthError::Key(
                "neither an HS256 secret nor a public key is configured".into(),
            ));
        }
        Ok(Authenticator {
            verifiers,
            signer,
            leeway_secs,
        })
    }

    /// The leeway for `exp` and `nbf`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Algorithms this authenticator accepts.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.verifiers.iter().map(|v| v.alg).collect()
    }

    /// Whether `mint`/`mint_guest` can work (an HS256 secret is configured).
    pub fn can_mint(&self) -> bool {
        self.signer.is_some()
    }

    /// Checks signature, time claims and claims. With leeway `L`, the token
    /// is expired when `now_secs >= exp + L` and not yet valid when
    /// `now_secs + L < nbf`.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        // header.payload.signature; the signature covers "header.payload".
        let (message, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (header, payload) = message.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthError::Malformed)?;
        let header: JoseHeader =
            serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
        let verifier = self
            .verifiers
            .iter()
            .find(|v| v.alg == header.alg)
            .ok_or(AuthError::WrongAlgorithm)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Malformed)?;
        if !verifier.key.verify(message.as_bytes(), &signature) {
            return Err(AuthError::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::Malformed)?;
        let claims: RawClaims =
            serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
        identity_from_claims(claims, now_secs, self.leeway_secs)
    }

    /// Mints an HS256 token. `ttl_secs: None` gives a token without `exp`.
    pub fn mint(
        &self,
        user: &str,
        name: Option<&str>,
        ttl_secs: Option<u64>,
        rooms: Option<&[String]>,
        admin: bool,
        now_secs: u64,
    ) -> Result<String, AuthError> {
        self.mint_claims(user, name, ttl_secs, rooms, admin, false, now_secs)
    }

    #[allow(clippy::too_many_arguments)]
    fn mint_claims(
        &self,
        user: &str,
        name: Option<&str>,
        ttl_secs: Option<u64>,
        rooms: Option<&[String]>,
        admin: bool,
        guest: bool,
        now_secs: u64,
    ) -> Result<String, AuthError> {
        let key = self.signer.as_ref().ok_or(AuthError::NoSecret)?;
        // Never mint what `verify` would refuse.
        if !valid_user_id(user) {
            return Err(AuthError::InvalidClaims(
                "sub must be 1 to 64 characters of A-Z a-z 0-9 _ . @ -",
            ));
        }
        if let Some(n) = name {
            if n.chars().count() > MAX_ID_LEN {
                return Err(AuthError::BadName("longer than 64 characters"));
            }
        }
        let exp = match ttl_secs {
            Some(ttl) => Some(
                now_secs
                    .checked_add(ttl)
                    .ok_or(AuthError::InvalidClaims("ttl too large"))?,
            ),
            None => None,
        };
        let claims = MintClaims {
            sub: user,
            name: name.filter(|n| !n.is_empty()),
            iat: now_secs,
            exp,
            rooms,
            admin,
            guest,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| AuthError::Key(e.to_string()))
    }

    /// Mints a 30-day guest token (claim `guest: true`) for a fresh user id
    /// (`g-` + 12 of `[a-z0-9]`). Returns `(user_id, token)`.
    pub fn mint_guest(&self, name: &str, now_secs: u64) -> Result<(String, String), AuthError> {
        if self.signer.is_none() {
            return Err(AuthError::NoSecret);
        }
        let name = validate_guest_name(name)?;
        let user = guest_id();
        let token = self.mint_claims(
            &user,
            Some(name),
            Some(GUEST_TTL_SECS),
            None,
            false,
            true,
            now_secs,
        )?;
        Ok((user, token))
    }
}

impl Verifier {
    fn new(key: VerifyKey) -> Self {
        Verifier {
            alg: key.algorithm(),
            key,
        }
    }
}

/// Accepts integer or (non-negative, finite) fractional NumericDate.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    match v.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Some(f as u64),
        _ => None,
    }
}

fn identity_from_claims(c: RawClaims, now: u64, leeway: u64) -> Result<Identity, AuthError> {
    let exp = match &c.exp {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            numeric_date(v)
                .ok_or(AuthError::InvalidClaims("exp must be a number"))?
                .saturating_add(leeway),
        ),
    };
    if matches!(exp, Some(exp) if now >= exp) {
        return Err(AuthError::Expired);
    }
    match &c.nbf {
        None | Some(Value::Null) => {}
        Some(v) => {
            let nbf = numeric_date(v).ok_or(AuthError::InvalidClaims("nbf must be a number"))?;
            if now.saturating_add(leeway) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
    }

    let user: Arc<str> = match c.sub {
        Some(Value::String(s)) if valid_user_id(&s) => s.into(),
        Some(Value::String(_)) => {
            return Err(AuthError::InvalidClaims(
                "sub must be 1 to 64 characters of A-Z a-z 0-9 _ . @ -",
            ))
        }
        None | Some(Value::Null) => return Err(AuthError::InvalidClaims("sub is required")),
        Some(_) => return Err(AuthError::InvalidClaims("sub must be a string")),
    };

    let name: Arc<str> = match c.name {
        None | Some(Value::Null) => user.clone(),
        Some(Value::String(s)) if s.is_empty() => user.clone(),
        Some(Value::String(s)) if s.chars().count() <= MAX_ID_LEN => s.into(),
        Some(Value::String(_)) => {
            return Err(AuthError::InvalidClaims(
                "name must be at most 64 characters",
            ))
        }
        Some(_) => return Err(AuthError::InvalidClaims("name must be a string")),
    };

    let rooms: Option<Arc<[String]>> = match c.rooms {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push(s),
                    _ => {
                        return Err(AuthError::InvalidClaims(
                            "rooms must be an array of strings",
                        ))
                    }
                }
            }
            Some(out.into())
        }
        Some(_) => {
            return Err(AuthError::InvalidClaims(
                "rooms must be an array of strings",
            ))
        }
    };

    let admin = match c.admin {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(AuthError::InvalidClaims("admin must be a boolean")),
    };

    let guest = match c.guest {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(AuthError::InvalidClaims("guest must be a boolean")),
    };

    Ok(Identity {
        user,
        name,
        exp,
        rooms,
        admin,
        guest,
    })
}

/// Trims and checks a guest display name; guests are anonymous, so control
/// characters are refused too.
fn validate_guest_name(name: &str) -> Result<&str, AuthError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(AuthError::BadName("must not be empty"));
    }
    if name.chars().count() > MAX_ID_LEN {
        return Err(AuthError::BadName("longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(AuthError::BadName("contains control characters"));
    }
    Ok(name)
}

fn guest_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    // ThreadRng is a CSPRNG, so ids are not guessable.
    let mut rng = rand::rng();
    let mut id = String::with_capacity(14);
    id.push_str("g-");
    for _ in 0..12 {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// RSA PEM -> RS256, EC P-256 PEM -> ES256; anything else is an error.
/// The key is parsed here, once, into the form `verify` uses.
fn parse_public_key(pem: &[u8]) -> Result<VerifyKey, AuthError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        // jsonwebtoken hands over PKCS#1 RSAPublicKey DER (from either PEM
        // form); a private key does not parse as one.
        let key = rsa::RsaPublicKey::from_pkcs1_der(key.as_bytes())
            .map_err(|e| AuthError::Key(format!("not a valid RSA public key: {e}")))?;
        let bits = key.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(AuthError::Key(format!(
                "RSA public key has {bits} bits, at least {MIN_RSA_BITS} are required"
            )));
        }
        return Ok(VerifyKey::Rs256(rsa::pkcs1v15::VerifyingKey::new(key)));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return p256::ecdsa::VerifyingKey::from_sec1_bytes(key.as_bytes())
            .map(VerifyKey::Es256)
            .map_err(|_| {
                AuthError::Key("EC public key is not a P-256 key (only ES256 is supported)".into())
            });
    }
    Err(AuthError::Key(
        "expected an RSA or EC (P-256) public key in PEM format".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-0123456789";
    const NOW: u64 = 1_700_000_000;

    // Fixed test keys (generated once with openssl, embedded so tests need no tools).
    const EC_PRIVATE: &str = include_str!("../tests/keys/ec-private.pem");
    const EC_PUBLIC: &str = include_str!("../tests/keys/ec-public.pem");
    const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa-public.pem");
    const RSA_PUBLIC_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAz/pEnckdCKEC/QX6N8jQg61c1ZFU14IF3MU8C5QWUEK8+JNhKfpB
WRQ+r0bq2aDiuEsikjJauU0t8CTTLnu6eyitIf+yKT/uNJI/K7yJ3qobbk1tA4aG
RfrsYECIslvlj6L/Y4CPrG4h4q34RYXutBG+3oGprKdLV+47jqwADp5s0XgL0BCy
wzSsSi32m/EMLG181vYvO4HOEUfaC6v3/rDFLcBlnBbLsQ5PaLVx1DWKEtm8tjdY
oskfP2d57AgD6jK/J9Xvh41exmXdrQIyJMlMxYL08AWduSXikgOY+7lN/EeG8gXI
oPsaULCNM3PPS//wluq7uQPtWXHh2JTWQQIDAQAB
-----END RSA PUBLIC KEY-----
";
    const EC_P384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEi7aJ3Kcca06T8wIQjQ76jEWaGZaDuoXi
gZpjjXP6LuBbY3BJOwTWYdyzWdkYUBmoHs9/cs9aZVZPmbsY+Zix1g5bntI9rjWx
SbUCGq6Vl8ms6yg00g+4cXtuEGtiIY2u
-----END PUBLIC KEY-----
";
    const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAR8qW2uq3lL5yYM9TrTdHyCF4xiz0EOEFgveNseD4SSM=
-----END PUBLIC KEY-----
";

    fn auth() -> Authenticator {
        Authenticator::new(Some(SECRET), None, 0).unwrap()
    }

    /// Signs arbitrary claims with HS256 (bypassing `mint`'s own checks).
    fn sign(claims: &Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn authenticator_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Authenticator>();
        check::<Identity>();
    }

    #[test]
    fn valid_token_gives_identity() {
        let t = sign(
            &json!({"sub": "alice", "name": "Alice A.", "exp": NOW + 60,
                    "rooms": ["general", "team-*"], "admin": true, "iat": NOW, "aud": "x"}),
            SECRET,
        );
        let id = auth().verify(&t, NOW).unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(&*id.name, "Alice A.");
        assert_eq!(id.exp, Some(NOW + 60));
        assert_eq!(
            id.rooms.as_deref(),
            Some(&["general".to_string(), "team-*".to_string()][..])
        );
        assert!(id.admin);
    }

    #[test]
    fn minimal_token_defaults() {
        let t = sign(&json!({"sub": "bob"}), SECRET);
        let id = auth().verify(&t, NOW).unwrap();
        assert_eq!(&*id.user, "bob");
        assert_eq!(&*id.name, "bob", "name defaults to the user id");
        assert_eq!(id.exp, None);
        assert_eq!(id.rooms, None);
        assert!(!id.admin);
        // Empty name and explicit nulls also fall back to defaults.
        let t = sign(
            &json!({"sub": "bob", "name": "", "rooms": null, "admin": null, "exp": null}),
            SECRET,
        );
        let id = auth().verify(&t, NOW).unwrap();
        assert_eq!(&*id.name, "bob");
        assert_eq!(id.rooms, None);
    }

    #[test]
    fn expiry_has_no_leeway() {
        let a = auth();
        let t = sign(&json!({"sub": "a", "exp": NOW}), SECRET);
        assert_eq!(a.verify(&t, NOW), Err(AuthError::Expired));
        assert_eq!(a.verify(&t, NOW + 1000), Err(AuthError::Expired));
        assert!(a.verify(&t, NOW - 1).is_ok());
        let t = sign(&json!({"sub": "a", "exp": NOW + 1}), SECRET);
        assert!(a.verify(&t, NOW).is_ok());
        assert_eq!(AuthError::Expired.to_string(), "token expired");
        // Fractional NumericDate is accepted.
        let t = sign(&json!({"sub": "a", "exp": (NOW + 10) as f64 + 0.5}), SECRET);
        assert_eq!(a.verify(&t, NOW).unwrap().exp, Some(NOW + 10));
    }

    #[test]
    fn bad_exp_and_nbf() {
        let a = auth();
        for exp in [json!("soon"), json!(-5), json!(true)] {
            let t = sign(&json!({"sub": "a", "exp": exp}), SECRET);
            assert_eq!(
                a.verify(&t, NOW),
                Err(AuthError::InvalidClaims("exp must be a number"))
            );
        }
        let t = sign(&json!({"sub": "a", "nbf": NOW + 5}), SECRET);
        assert_eq!(a.verify(&t, NOW), Err(AuthError::NotYetValid));
        assert!(a.verify(&t, NOW + 5).is_ok());
    }

    #[test]
    fn bad_signature() {
        let t = sign(&json!({"sub": "a"}), b"another-secret");
        assert_eq!(auth().verify(&t, NOW), Err(AuthError::BadSignature));
        assert_eq!(AuthError::BadSignature.to_string(), "bad signature");
        // Tampered payload with the original signature.
        let good = sign(&json!({"sub": "a"}), SECRET);
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&json!({"sub": "a", "admin": true})),
            parts[2]
        );
        assert_eq!(auth().verify(&forged, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn missing_and_malformed() {
        let a = auth();
        assert_eq!(a.verify("", NOW), Err(AuthError::Missing));
        assert_eq!(AuthError::Missing.to_string(), "missing token");
        for t in ["abc", "a.b", "a.b.c", "....", "ä.ö.ü", "eyJ.eyJ.x"] {
            assert_eq!(a.verify(t, NOW), Err(AuthError::Malformed), "{t}");
        }
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(a.verify(&huge, NOW), Err(AuthError::Malformed));
        assert_eq!(AuthError::Malformed.to_string(), "malformed token");
    }

    #[test]
    fn alg_none_is_rejected() {
        let header = b64(&json!({"alg": "none", "typ": "JWT"}));
        let payload = b64(&json!({"sub": "mallory", "admin": true}));
        for t in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert!(auth().verify(&t, NOW).is_err(), "{t}");
        }
    }

    #[test]
    fn wrong_alg_is_rejected() {
        // HS512 with the same secret is still not HS256.
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub": "a"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(auth().verify(&t, NOW), Err(AuthError::WrongAlgorithm));
        // ES256 token against an HS256-only authenticator.
        let t = es256_token(&json!({"sub": "a"}));
        assert_eq!(auth().verify(&t, NOW), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn hs256_refused_when_only_public_key() {
        let a = Authenticator::new(None, Some(EC_PUBLIC.as_bytes()), 0).unwrap();
        assert_eq!(a.algorithms(), vec![Algorithm::ES256]);
        assert!(!a.can_mint());
        let t = sign(&json!({"sub": "a"}), SECRET);
        assert_eq!(a.verify(&t, NOW), Err(AuthError::WrongAlgorithm));
        // Classic confusion attack: HS256 keyed with the public key bytes.
        let t = sign(&json!({"sub": "a"}), EC_PUBLIC.as_bytes());
        assert_eq!(a.verify(&t, NOW), Err(AuthError::WrongAlgorithm));
        assert_eq!(
            a.mint("a", None, None, None, false, NOW),
            Err(AuthError::NoSecret)
        );
        assert_eq!(a.mint_guest("x", NOW), Err(AuthError::NoSecret));
    }

    #[test]
    fn sub_rules() {
        let a = auth();
        let t = sign(&json!({"name": "x"}), SECRET);
        assert_eq!(
            a.verify(&t, NOW),
            Err(AuthError::InvalidClaims("sub is required"))
        );
        let t = sign(&json!({"sub": 42}), SECRET);
        assert_eq!(
            a.verify(&t, NOW),
            Err(AuthError::InvalidClaims("sub must be a string"))
        );
        let too_long = "a".repeat(65);
        for bad in ["", "a b", "a:b", "ü", "a/b", "<script>", too_long.as_str()] {
            let t = sign(&json!({ "sub": bad }), SECRET);
            let err = a.verify(&t, NOW).unwrap_err();
            assert!(matches!(err, AuthError::InvalidClaims(_)), "{bad:?}");
            assert!(err.to_string().starts_with("invalid claims: sub"), "{err}");
        }
        let max = "Z".repeat(64);
        for good in ["a", "A.b_c-d@e.org", "0", max.as_str()] {
            let t = sign(&json!({ "sub": good }), SECRET);
            assert_eq!(&*a.verify(&t, NOW).unwrap().user, good);
        }
    }

    #[test]
    fn name_rules() {
        let a = auth();
        let ok = "é".repeat(64); // 64 chars, 128 bytes: the limit is in characters
        let t = sign(&json!({"sub": "a", "name": ok}), SECRET);
        assert_eq!(&*a.verify(&t, NOW).unwrap().name, ok.as_str());
        let t = sign(&json!({"sub": "a", "name": "x".repeat(65)}), SECRET);
        assert_eq!(
            a.verify(&t, NOW),
            Err(AuthError::InvalidClaims(
                "name must be at most 64 characters"
            ))
        );
        let t = sign(&json!({"sub": "a", "name": ["x"]}), SECRET);
        assert_eq!(
            a.verify(&t, NOW),
            Err(AuthError::InvalidClaims("name must be a string"))
        );
    }

    #[test]
    fn rooms_and_admin_types() {
        let a = auth();
        for rooms in [json!("general"), json!([1]), json!(["a", null]), json!({})] {
            let t = sign(&json!({"sub": "a", "rooms": rooms}), SECRET);
            assert_eq!(
                a.verify(&t, NOW),
                Err(AuthError::InvalidClaims(
                    "rooms must be an array of strings"
                ))
            );
        }
        let t = sign(&json!({"sub": "a", "rooms": []}), SECRET);
        let id = a.verify(&t, NOW).unwrap();
        assert!(!id.may_access("general"), "empty list grants nothing");
        let t = sign(&json!({"sub": "a", "admin": "yes"}), SECRET);
        assert_eq!(
            a.verify(&t, NOW),
            Err(AuthError::InvalidClaims("admin must be a boolean"))
        );
        assert_eq!(
            AuthError::InvalidClaims("admin must be a boolean").to_string(),
            "invalid claims: admin must be a boolean"
        );
    }

    fn ident(user: &str, rooms: Option<&[&str]>) -> Identity {
        Identity {
            user: user.into(),
            name: user.into(),
            exp: None,
            rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
            admin: false,
            guest: false,
        }
    }

    #[test]
    fn room_patterns() {
        let all = ident("alice", None);
        assert!(all.may_access("general"));
        assert!(all.may_access("x"));

        let some = ident("alice", Some(&["general", "team-*", "ops"]));
        assert!(some.may_access("general"));
        assert!(some.may_access("ops"));
        assert!(
            !some.may_access("general2"),
            "exact pattern is not a prefix"
        );
        assert!(!some.may_access("gen"));
        assert!(some.may_access("team-"));
        assert!(some.may_access("team-red"));
        assert!(!some.may_access("team"));
        assert!(!some.may_access("random"));

        let star = ident("alice", Some(&["*"]));
        assert!(star.may_access("anything"));
        // A `*` in the middle is literal, not a wildcard.
        let mid = ident("alice", Some(&["a*b"]));
        assert!(mid.may_access("a*b"));
        assert!(!mid.may_access("axb"));
    }

    #[test]
    fn dm_rule() {
        let alice = ident("alice", None);
        assert!(alice.may_access("dm:alice:bob"));
        assert!(ident("bob", None).may_access("dm:alice:bob"));
        assert!(!ident("carol", None).may_access("dm:alice:bob"));
        assert!(!ident("carol", Some(&["*"])).may_access("dm:alice:bob"));
        assert!(!ident("carol", Some(&["dm:*"])).may_access("dm:alice:bob"));
        assert!(!ident("carol", Some(&["dm:alice:bob"])).may_access("dm:alice:bob"));
        // Participants get in even with a restrictive room list.
        assert!(ident("alice", Some(&["general"])).may_access("dm:alice:bob"));
        assert!(ident("alice", Some(&[])).may_access("dm:alice:bob"));
        // Non-canonical or malformed DM names are refused.
        assert!(!alice.may_access("dm:bob:alice"));
        assert!(!alice.may_access("dm:alice"));
        assert!(!alice.may_access("dm:alice:"));
        assert!(!alice.may_access("dm::alice"));
        assert!(!alice.may_access("dm:alice:bob:x"));
        assert!(!alice.may_access("dm:"));
        // Prefixes of user ids do not match.
        assert!(!ident("ali", None).may_access("dm:alice:bob"));
        // Talking to yourself is a valid (canonical) pair.
        assert!(alice.may_access("dm:alice:alice"));
        // Byte order: uppercase sorts before lowercase.
        assert!(ident("Zed", None).may_access("dm:Zed:amy"));
        assert!(!ident("Zed", None).may_access("dm:amy:Zed"));
    }

    #[test]
    fn mint_verify_round_trip() {
        let a = auth();
        let rooms = vec!["general".to_string(), "team-*".to_string()];
        let t = a
            .mint("alice", Some("Alice"), Some(3600), Some(&rooms), true, NOW)
            .unwrap();
        let id = a.verify(&t, NOW + 10).unwrap();
        assert_eq!(&*id.user, "alice");
        assert_eq!(&*id.name, "Alice");
        assert_eq!(id.exp, Some(NOW + 3600));
        assert_eq!(id.rooms.as_deref(), Some(&rooms[..]));
        assert!(id.admin);
        assert_eq!(a.verify(&t, NOW + 3600), Err(AuthError::Expired));

        let t = a.mint("bob", None, None, None, false, NOW).unwrap();
        let id = a.verify(&t, u64::MAX).unwrap();
        assert_eq!((&*id.name, id.exp, id.admin), ("bob", None, false));
        assert!(id.rooms.is_none());

        // A different secret does not accept it.
        let other = Authenticator::new(Some(b"other"), None, 0).unwrap();
        assert_eq!(other.verify(&t, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn mint_refuses_bad_input() {
        let a = auth();
        assert!(matches!(
            a.mint("bad user", None, None, None, false, NOW),
            Err(AuthError::InvalidClaims(_))
        ));
        assert!(matches!(
            a.mint("a", Some(&"x".repeat(65)), None, None, false, NOW),
            Err(AuthError::BadName(_))
        ));
        assert!(matches!(
            a.mint("a", None, Some(u64::MAX), None, false, NOW),
            Err(AuthError::InvalidClaims(_))
        ));
    }

    #[test]
    fn guest_tokens() {
        let a = auth();
        let (user, token) = a.mint_guest("  Alice  ", NOW).unwrap();
        assert_eq!(user.len(), 14);
        assert!(user.starts_with("g-"));
        assert!(user[2..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        let id = a.verify(&token, NOW).unwrap();
        assert_eq!(&*id.user, user.as_str());
        assert_eq!(&*id.name, "Alice", "name is trimmed");
        assert_eq!(id.exp, Some(NOW + 30 * 24 * 3600));
        assert!(!id.admin);
        assert!(id.rooms.is_none());

        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| a.mint_guest("g", NOW).unwrap().0)
            .collect();
        assert_eq!(ids.len(), 1000, "guest ids are unique");
    }

    #[test]
    fn guest_name_rules() {
        let a = auth();
        for bad in ["", "   ", "\t\n"] {
            assert_eq!(
                a.mint_guest(bad, NOW),
                Err(AuthError::BadName("must not be empty"))
            );
        }
        assert_eq!(
            a.mint_guest(&"n".repeat(65), NOW),
            Err(AuthError::BadName("longer than 64 characters"))
        );
        assert_eq!(
            a.mint_guest("a\u{0}b", NOW),
            Err(AuthError::BadName("contains control characters"))
        );
        let (_, t) = a.mint_guest(&format!(" {} ", "ñ".repeat(64)), NOW).unwrap();
        assert_eq!(a.verify(&t, NOW).unwrap().name.chars().count(), 64);
    }

    #[test]
    fn new_needs_a_key() {
        assert!(matches!(
            Authenticator::new(None, None, 0),
            Err(AuthError::Key(_))
        ));
        assert!(matches!(
            Authenticator::new(Some(b""), None, 0),
            Err(AuthError::Key(_))
        ));
    }

    #[test]
    fn garbage_pem_is_an_error() {
        for pem in [
            &b"not a pem"[..],
            b"",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            EC_PRIVATE.as_bytes(), // a private key is not a public key
            RSA_PRIVATE.as_bytes(),
            ED25519_PUBLIC.as_bytes(),
            EC_P384_PUBLIC.as_bytes(),
        ] {
            let err = Authenticator::new(None, Some(pem), 0).unwrap_err();
            assert!(matches!(err, AuthError::Key(_)), "{err:?}");
            assert!(err.to_string().starts_with("invalid key: "));
        }
    }

    fn es256_token(claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
    }

    #[test]
    fn es256_round_trip() {
        let a = Authenticator::new(None, Some(EC_PUBLIC.as_bytes()), 0).unwrap();
        let t = es256_token(&json!({"sub": "carol", "exp": NOW + 5}));
        let id = a.verify(&t, NOW).unwrap();
        assert_eq!(&*id.user, "carol");
        assert_eq!(a.verify(&t, NOW + 5), Err(AuthError::Expired));
        // Flip one signature character.
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(a.verify(&bad, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn rs256_round_trip() {
        for public in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
            let a = Authenticator::new(None, Some(public.as_bytes()), 0).unwrap();
            assert_eq!(a.algorithms(), vec![Algorithm::RS256]);
            let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
            let t = jsonwebtoken::encode(
                &Header::new(Algorithm::RS256),
                &json!({"sub": "dave", "rooms": ["x*"]}),
                &key,
            )
            .unwrap();
            let id = a.verify(&t, NOW).unwrap();
            assert_eq!(&*id.user, "dave");
            assert!(id.may_access("xyz"));
            // ES256 token is refused by an RS256-only authenticator.
            let t = es256_token(&json!({"sub": "dave"}));
            assert_eq!(a.verify(&t, NOW), Err(AuthError::WrongAlgorithm));
        }
    }

    #[test]
    fn secret_and_public_key_together() {
        let a = Authenticator::new(Some(SECRET), Some(EC_PUBLIC.as_bytes()), 0).unwrap();
        assert_eq!(a.algorithms(), vec![Algorithm::HS256, Algorithm::ES256]);
        let t = es256_token(&json!({"sub": "x"}));
        assert_eq!(&*a.verify(&t, NOW).unwrap().user, "x");
        let t = sign(&json!({"sub": "y"}), SECRET);
        assert_eq!(&*a.verify(&t, NOW).unwrap().user, "y");
        let t = sign(&json!({"sub": "y"}), b"nope");
        assert_eq!(a.verify(&t, NOW), Err(AuthError::BadSignature));
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "a"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(a.verify(&t, NOW), Err(AuthError::WrongAlgorithm));
        assert_eq!(a.verify("x.y", NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn small_or_huge_rsa_keys_are_refused_at_start() {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        // Any odd modulus makes a syntactically valid public key.
        for (bits, ok) in [
            (1024usize, false),
            (2047, false),
            (2048, true),
            (4096, true),
        ] {
            let mut n = vec![0xffu8; bits.div_ceil(8)];
            if bits % 8 != 0 {
                n[0] = 0xff >> (8 - bits % 8);
            }
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from(65537u32),
            )
            .unwrap();
            let pem = key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
            let got = Authenticator::new(None, Some(pem.as_bytes()), 0);
            assert_eq!(got.is_ok(), ok, "{bits} bits: {got:?}");
            if !ok {
                let err = got.unwrap_err().to_string();
                assert!(err.contains(&format!("has {bits} bits")), "{err}");
            }
        }
    }

    #[test]
    fn leeway_for_exp_and_nbf() {
        let a = Authenticator::new(Some(SECRET), None, 30).unwrap();
        assert_eq!(a.leeway_secs(), 30);
        let t = sign(&json!({"sub": "a", "exp": NOW}), SECRET);
        // Accepted up to 29 s after exp; the identity's deadline includes
        // the leeway, so an open connection is closed at exp + 30.
        assert_eq!(a.verify(&t, NOW).unwrap().exp, Some(NOW + 30));
        assert!(a.verify(&t, NOW + 29).is_ok());
        assert_eq!(a.verify(&t, NOW + 30), Err(AuthError::Expired));
        assert_eq!(a.verify(&t, NOW + 1000), Err(AuthError::Expired));
        // nbf up to 30 s in the future is accepted.
        let t = sign(&json!({"sub": "a", "nbf": NOW + 30}), SECRET);
        assert!(a.verify(&t, NOW).is_ok());
        let t = sign(&json!({"sub": "a", "nbf": NOW + 31}), SECRET);
        assert_eq!(a.verify(&t, NOW), Err(AuthError::NotYetValid));
        assert!(a.verify(&t, NOW + 1).is_ok());
        // Huge values do not overflow.
        let t = sign(&json!({"sub": "a", "exp": u64::MAX}), SECRET);
        assert_eq!(a.verify(&t, u64::MAX - 1).unwrap().exp, Some(u64::MAX));
        let t = sign(&json!({"sub": "a", "nbf": u64::MAX}), SECRET);
        assert!(a.verify(&t, u64::MAX - 10).is_ok());
        // The leeway applies to every algorithm.
        let es = Authenticator::new(None, Some(EC_PUBLIC.as_bytes()), 30).unwrap();
        let t = es256_token(&json!({"sub": "a", "exp": NOW}));
        assert!(es.verify(&t, NOW + 29).is_ok());
        assert_eq!(es.verify(&t, NOW + 30), Err(AuthError::Expired));
    }

    #[test]
    fn guest_claim() {
        let a = auth();
        let (user, token) = a.mint_guest("Gus", NOW).unwrap();
        let id = a.verify(&token, NOW).unwrap();
        assert!(id.guest);
        assert_eq!(&*id.user, user.as_str());
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["guest"], true);
        // Ordinary tokens are not guests and carry no guest claim.
        let t = a.mint("alice", None, None, None, false, NOW).unwrap();
        assert!(!a.verify(&t, NOW).unwrap().guest);
        let payload = t.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(claims.get("guest").is_none(), "{claims}");
        let t = sign(&json!({"sub": "a", "guest": false}), SECRET);
        assert!(!a.verify(&t, NOW).unwrap().guest);
        let t = sign(&json!({"sub": "a", "guest": "yes"}), SECRET);
        assert_eq!(
            a.verify(&t, NOW),
            Err(AuthError::InvalidClaims("guest must be a boolean"))
        );
    }

    #[test]
    fn header_and_signature_edge_cases() {
        let a = auth();
        let good = sign(&json!({"sub": "a"}), SECRET);
        let parts: Vec<&str> = good.split('.').collect();
        // Signature not base64url.
        let t = format!("{}.{}.{}", parts[0], parts[1], "!!!");
        assert_eq!(a.verify(&t, NOW), Err(AuthError::Malformed));
        // Empty or truncated signature.
        let t = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(a.verify(&t, NOW), Err(AuthError::BadSignature));
        let t = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..8]);
        assert_eq!(a.verify(&t, NOW), Err(AuthError::BadSignature));
        // Header without alg, or not JSON.
        let t = format!("{}.{}.{}", b64(&json!({"typ": "JWT"})), parts[1], parts[2]);
        assert_eq!(a.verify(&t, NOW), Err(AuthError::Malformed));
        // Extra segment.
        let t = format!("x.{good}");
        assert_eq!(a.verify(&t, NOW), Err(AuthError::Malformed));
        // Valid signature over a payload that is not JSON.
        let header = parts[0];
        let payload = URL_SAFE_NO_PAD.encode(b"not json");
        let msg = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(msg.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            a.verify(&format!("{msg}.{sig}"), NOW),
            Err(AuthError::Malformed)
        );
        // An RS256 header against an ES256 key is the wrong algorithm.
        let es = Authenticator::new(None, Some(EC_PUBLIC.as_bytes()), 0).unwrap();
        let t = format!(
            "{}.{}.{}",
            b64(&json!({"alg": "RS256"})),
            parts[1],
            parts[2]
        );
        assert_eq!(es.verify(&t, NOW), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn now_is_sane() {
        assert!(now_secs() > NOW);
    }
}
