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
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTrNu73qceeY3CtSu
kmMbc56jDgDlKID+La7kLd1YQsyhRANCAAS/uNqXVjz+jyqLxiETfWwnnaiy8Jw3
QjVAHRjB0gC/yJokouigWc06HQA4iqpGVeaWrv43LW2M6THXXwQFKDAJ
-----END PRIVATE KEY-----
";

const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEv7jal1Y8/o8qi8YhE31sJ52osvCc
N0I1QB0YwdIAv8iaJKLooFnNOh0AOIqqRlXmlq7+Ny1tjOkx118EBSgwCQ==
-----END PUBLIC KEY-----
";

const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDP+kSdyR0IoQL9
Bfo3yNCDrVzVkVTXggXcxTwLlBZQQrz4k2Ep+kFZFD6vRurZoOK4SyKSMlq5TS3w
JNMue7p7KK0h/7IpP+40kj8rvIneqhtuTW0DhoZF+uxgQIiyW+WPov9jgI+sbiHi
rfhFhe60Eb7egamsp0tX7juOrAAOnmzReAvQELLDNKxKLfab8QwsbXzW9i87gc4R
R9oLq/f+sMUtwGWcFsuxDk9otXHUNYoS2by2N1iiyR8/Z3nsCAPqMr8n1e+HjV7G
Zd2tAjIkyUzFgvTwBZ25JeKSA5j7uU38R4byBcig+xpQsI0zc89L//CW6ru5A+1Z
ceHYlNZBAgMBAAECggEAQd/NWATZc2A8aBQ6muy6TtrcarDrpI8EeFbom+o93xIk
dL+JqRghFqv45t+Zh3EUHrd9rbzRS5wMjuG7GiAKgvPxUrGAptwfAPvJknrXWHWc
1qUjgFhds1C1Cg+mvIerAIHqToPr/fusM/ZSiwLPBq4QPL3pFkyu6p0EtD36jqZA
s17pyAE/11UPnqYxHgb4EuvOoLb0xSsvH/CQ61DDYsqUlHuXNfKiuqwqxn7Il9ZU
4LAselyoAFJ57MyiHYVcZa3XImlLInmxbmOySjzBjfl7MgciQYnQsTzv277joK9F
Sgz3zAovzpyJMLKr/iBmM7amfUYWXSfReXEcbL6g2QKBgQD7HT11ShOdUJOI8gRp
gyyV0YcNLgn6R488Rye/MbX1iepCRkisrEdGW9UeEySzKm1j2HNlwCH2CDfQgyvC
t8ZOZXE/X1n4lpCHo2Y0YvsT7jrsWfWUTjtvzWSxH6QDzagaQ7zSExoP3dhi71KA
7iGbkPDBw8X6fhL2p/iokUj2lwKBgQDUBivfkgMz4KAEMiGDYD7/a794ghrUlaDf
8I6+CarYmtWQmtsA6lyMTAlynWVYZMgqSQm1IFh+otMWKYrhLrBVXGBCSiskc5Ri
a4ZsapKtHTylfRwcherO/wwjG53evJ70BOCeBLVDS/lOUOraXP6ugztB0WKenBIO
esiZFHLM5wKBgQC/uE9X4TqgfQhnIf/kXtYHfHVTxravczsUlm7uNpHp6WYFO4v4
6X9xZGOOFqeKcvYZqQRRxyMmqJeUhtE+VPj+mcygybfzZ2DpbgN2M6vmR5iNIxGw
LRqL/ZDG+pVKohWaF+Vtrk/TlVjEEFw5O5ZFI5/tD/9zhBYOY6ghaur9+QKBgQCK
rD6ly2os1A3UsLUaqCiMBn0E5JOH1xWRYlT6FniXky17ls0GnEJLwK+tNyTB26jP
f1XKEY3Pxc8p/6HGBjNuoSyULs5o2O+EL6+L2Wh1sVmpI1rvjOc227mkfLuUoumT
0FzY/VtQ2LAGeQYiLBCnM03ejoRiGNH2hngNJ0KuoQKBgQCCRyWGbQmOHkbuWoZt
XetHBOxm/rXSfRqbY0cNTYMKK2QwRhpoHp3y6Ep1/MXKgOJAZhcvxJU/Ltzb6eDu
0Sg6D53LB1fdNKFTfNl9k8O9n+ycoUiYSEvKDYmn6tgB+sbKJChSCSInGYouPPkY
CLhleHCwc78phPlMCIUSwqPbCg==
-----END PRIVATE KEY-----
";

const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAz/pEnckdCKEC/QX6N8jQ
g61c1ZFU14IF3MU8C5QWUEK8+JNhKfpBWRQ+r0bq2aDiuEsikjJauU0t8CTTLnu6
eyitIf+yKT/uNJI/K7yJ3qobbk1tA4aGRfrsYECIslvlj6L/Y4CPrG4h4q34RYXu
tBG+3oGprKdLV+47jqwADp5s0XgL0BCywzSsSi32m/EMLG181vYvO4HOEUfaC6v3
/rDFLcBlnBbLsQ5PaLVx1DWKEtm8tjdYoskfP2d57AgD6jK/J9Xvh41exmXdrQIy
JMlMxYL08AWduSXikgOY+7lN/EeG8gXIoPsaULCNM3PPS//wluq7uQPtWXHh2JTW
QQIDAQAB
-----END PUBLIC KEY-----
";

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
