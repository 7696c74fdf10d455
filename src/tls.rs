//! TLS set-up: the certificate and key (PEM), the `rustls` server config the
//! shards share, and a certificate that SIGHUP can swap without touching
//! open connections.
//!
//! The reactor's per-connection side (rustls's `UnbufferedServerConnection`
//! behind the socket) is `reactor::tls_stream`. Here is only what is built
//! once per process and read once per handshake.

use parking_lot::RwLock;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no PEM certificate in {}", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate chain and key files, and the pair loaded from them last.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    /// Read once per handshake (never on the data path); written on reload.
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads the pair; an error names the file at fault.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertStore, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let key = load_pair(cert_path, key_path, &provider)?;
        Ok(CertStore {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Reads the files again and, if they hold a valid pair, serves it to
    /// new handshakes. On error the old pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write() = Arc::new(key);
        Ok(())
    }

    /// The rustls config every shard's connections share: TLS 1.2 and 1.3,
    /// no client certificates, ALPN `http/1.1` (WebSocket upgrades are
    /// HTTP/1.1 requests).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Read { path, source }
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(read_err(cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(cert_path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::BadKey {
            path: key_path.to_owned(),
            reason: "no PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
        },
        source => TlsError::Read {
            path: key_path.to_owned(),
            source,
        },
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::BadKey {
        path: key_path.to_owned(),
        reason: format!("does not fit the certificate: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_and_reloads_keeping_the_old_pair_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let store = CertStore::load(&cert, &key).unwrap();
        let first = store.current.read().cert[0].clone();
        // A new valid pair replaces it.
        let (cert_b, key_b) = write_pair(dir.path(), "b");
        std::fs::copy(&cert_b, &cert).unwrap();
        std::fs::copy(&key_b, &key).unwrap();
        store.reload().unwrap();
        let second = store.current.read().cert[0].clone();
        assert_ne!(first, second);
        // A broken file is refused and the served pair stays.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(matches!(
            store.reload(),
            Err(TlsError::NoCertificate { .. })
        ));
        assert_eq!(store.current.read().cert[0], second);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        let err = CertStore::load(&cert, &other_key).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let err = CertStore::load(&cert, &cert).unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }
}
