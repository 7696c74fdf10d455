//! Times `Authenticator::verify` for an HS256 token, next to
//! `jsonwebtoken::decode` (what `verify` used before) for comparison.
//!
//! `cargo run --release --example jwt_verify [iterations]`

use std::hint::black_box;
use std::time::Instant;

use corechat::auth::Authenticator;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

fn main() {
    let iters: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let secret = b"bench-secret-0123456789abcdef";
    let now = corechat::auth::now_secs();
    let auth = Authenticator::new(Some(secret), None, 30).expect("authenticator");
    let rooms = vec!["general".to_string(), "team-*".to_string()];
    let token = auth
        .mint("alice", Some("Alice"), Some(3600), Some(&rooms), false, now)
        .expect("mint");
    println!("token: {} bytes", token.len());

    for _ in 0..iters / 10 {
        black_box(auth.verify(black_box(&token), now).is_ok());
    }
    let start = Instant::now();
    for _ in 0..iters {
        assert!(black_box(auth.verify(black_box(&token), now)).is_ok());
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
    println!("Authenticator::verify (HS256): {ns:.0} ns/verify ({iters} iterations)");

    let key = DecodingKey::from_secret(secret);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let start = Instant::now();
    for _ in 0..iters {
        let data = jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &key, &validation);
        assert!(black_box(data).is_ok());
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
    println!("jsonwebtoken::decode (HS256, for comparison): {ns:.0} ns/decode");
}
