//! A connection's byte stream: the socket itself, or TLS over it.
//!
//! The reactor reads and writes plaintext through `Transport`; the plain
//! variant is the socket call and nothing more. The TLS variant
//! (`tls_stream`) is rustls's unbuffered connection in front of the same
//! socket: records are read into and decrypted in the shard's read buffer,
//! and frames stay shared `Bytes` up to the encryption, the only per
//! connection step. Neither variant keeps a buffer while idle.

use super::tls_stream::TlsStream;
use mio::net::TcpStream;
use rustls::ServerConfig;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// What a TLS read saw besides plaintext; the reactor counts it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlsEvents {
    /// The handshake completed during this call.
    pub handshake_done: bool,
    /// The peer sent something that is not TLS, or an alert: the
    /// connection is finished (the error is also returned).
    pub failed: bool,
}

impl Transport {
    /// A new TLS connection over `sock`, handshake pending.
    pub fn tls(sock: TcpStream, config: &Arc<ServerConfig>) -> Result<Transport, rustls::Error> {
        Ok(Transport::Tls(Box::new(TlsStream::new(sock, config)?)))
    }

    /// The socket, to register with the poll.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Reads plaintext into `buf`, the shard's read buffer. `Ok(0)` is the
    /// end of the stream. A short read means "nothing more until the next
    /// readiness event" (a TLS read drains the socket or fills half of
    /// `buf` before it returns).
    pub fn read(&mut self, buf: &mut [u8], events: &mut TlsEvents) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf, events),
        }
    }

    /// Takes plaintext from `slices`; returns how much was taken.
    /// `WouldBlock` when the socket takes nothing now. TLS gathers small
    /// frames in `scratch` (a shard buffer idle while flushing) so that they
    /// share records.
    pub fn write_vectored(
        &mut self,
        slices: &[IoSlice<'_>],
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(slices),
            Transport::Tls(t) => t.write_vectored(slices, scratch),
        }
    }

    /// TLS records (handshake, alerts, encrypted frames) not yet on the socket.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.wants_write(),
        }
    }

    /// Writes pending TLS records until done or the socket is full.
    pub fn flush_records(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush_records(),
        }
    }

    /// Before the socket is dropped: a TLS close_notify, best effort (a
    /// peer that reads no more must not hold the shard).
    pub fn close_notify(&mut self) {
        if let Transport::Tls(t) = self {
            t.close_notify();
        }
    }
}
