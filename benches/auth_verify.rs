//! JWT verification cost per algorithm, as the accept path pays it: `Authenticator::verify`
//! with the key parsed once at start (HS256, RS256 with a 2048-bit key, ES256 on P-256),
//! plus what parsing the key per connection would add (RS256/ES256 PEM parsing).
//!
//! `cargo bench --bench auth_verify`

use corechat::auth::{now_secs, Authenticator};
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::hint::black_box;

// Test keys (the ones src/auth.rs tests use), embedded so the bench needs no tools.
const EC_PRIVATE: &str = include_str!("../tests/keys/ec-private.pem");

const EC_PUBLIC: &str = include_str!("../tests/keys/ec-public.pem");

const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa-private.pem");

const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa-public.pem");

fn claims() -> serde_json::Value {
    serde_json::json!({"sub": "lg-12345", "name": "Load Gen", "iat": now_secs(), "exp": now_secs() + 86_400})
}

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    encode(&Header::new(alg), &claims(), key).expect("sign")
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("jwt_verify");
    let now = now_secs();
    let hs = Authenticator::new(Some(b"corechat-bench-secret"), None, 30).expect("hs256");
    let t_hs = token(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"corechat-bench-secret"),
    );
    g.bench_function("HS256", |b| {
        b.iter(|| black_box(hs.verify(black_box(&t_hs), now).is_ok()))
    });
    let rs = Authenticator::new(None, Some(RSA_PUBLIC.as_bytes()), 30).expect("rs256");
    let t_rs = token(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key"),
    );
    g.bench_function("RS256 (key parsed once)", |b| {
        b.iter(|| black_box(rs.verify(black_box(&t_rs), now).is_ok()))
    });
    let es = Authenticator::new(None, Some(EC_PUBLIC.as_bytes()), 30).expect("es256");
    let t_es = token(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec key"),
    );
    g.bench_function("ES256 (key parsed once)", |b| {
        b.iter(|| black_box(es.verify(black_box(&t_es), now).is_ok()))
    });
    // what a per-connection key parse would cost on top (it is done once, in Authenticator::new)
    g.bench_function("RS256 key parse (avoided per connection)", |b| {
        b.iter(|| black_box(Authenticator::new(None, Some(RSA_PUBLIC.as_bytes()), 30).is_ok()))
    });
    g.bench_function("ES256 key parse (avoided per connection)", |b| {
        b.iter(|| black_box(Authenticator::new(None, Some(EC_PUBLIC.as_bytes()), 30).is_ok()))
    });
    assert!(
        hs.verify(&t_hs, now).is_ok()
            && rs.verify(&t_rs, now).is_ok()
            && es.verify(&t_es, now).is_ok()
    );
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
