//! wss:// for the load generator: a rustls client per connection, driven by
//! the same non-blocking event loop as plain sockets.
//!
//! Reads fill the caller's buffer until the socket is drained (so "a short
//! read means drained" holds as for TCP); writes hand plaintext to rustls
//! (bounded by its buffer limit) and push records to the socket. The plain
//! path does not go through here.

use anyhow::Context;
use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// What a wss:// run connects with.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the PEM certificates in `ca`, or anything with `insecure`
    /// (self-signed test certificates; signatures are still checked).
    pub fn new(host: &str, ca: Option<&Path>, insecure: bool) -> anyhow::Result<TlsClient> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = match (ca, insecure) {
            (_, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            (Some(ca), false) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("--tls-ca {}", ca.display()))?
                {
                    roots.add(cert.with_context(|| format!("--tls-ca {}", ca.display()))?)?;
                }
                anyhow::ensure!(
                    !roots.is_empty(),
                    "--tls-ca {}: no certificate",
                    ca.display()
                );
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (None, false) => anyhow::bail!(
                "wss:// needs --tls-ca FILE (the server's certificate or its CA) or --tls-insecure"
            ),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host} is not a TLS server name"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    pub fn connection(&self) -> io::Result<ClientConnection> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(io::Error::other)
    }
}

/// Reads plaintext into `buf` until it is full or the socket is drained.
/// `Ok(0)`: the end of the stream; `WouldBlock`: nothing yet.
pub fn read(tls: &mut ClientConnection, sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    loop {
        match tls.reader().read(&mut buf[filled..]) {
            Ok(0) => return Ok(filled),
            Ok(n) => {
                filled += n;
                if filled == buf.len() {
                    return Ok(filled);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return some_or(filled, e),
        }
        match tls.read_tls(sock) {
            Ok(0) => return Ok(filled),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return some_or(filled, e),
        }
        if let Err(e) = tls.process_new_packets() {
            let _ = flush(tls, sock);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // Handshake flights (and the upgrade request rustls held until the
        // handshake was done) leave at once.
        flush(tls, sock)?;
    }
}

/// Encrypts what rustls takes of `data` and writes records to the socket;
/// returns the plaintext bytes taken.
pub fn write(tls: &mut ClientConnection, sock: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    flush(tls, sock)?;
    let taken = tls.writer().write(data)?;
    flush(tls, sock)?;
    Ok(taken)
}

/// Writes pending records until done or the socket is full.
pub fn flush(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn some_or(filled: usize, e: io::Error) -> io::Result<usize> {
    if filled > 0 {
        Ok(filled)
    } else {
        Err(e)
    }
}

/// `--tls-insecure`: any certificate, any name; handshake signatures are
/// still verified with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
