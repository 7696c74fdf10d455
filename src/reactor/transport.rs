//! A connection's byte stream: the socket itself, or TLS over it.
//!
//! The reactor reads and writes plaintext through `Transport`; the plain
//! variant is the socket call and nothing more. The TLS variant is a
//! non-blocking `rustls::ServerConnection` in front of the same socket:
//! reads go socket -> `read_tls` -> `process_new_packets` -> plaintext, and
//! writes go queued frames -> the connection's writer (encryption, bounded
//! by `TLS_BUFFER_LIMIT`) -> `write_tls` -> socket. Frames stay shared
//! `Bytes` up to the writer: only the record encryption is per connection.

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

/// Encrypted bytes rustls may hold for one connection before its writer
/// takes no more plaintext: what the socket has not taken stays in the
/// connection's frame queue, where the slow-consumer check sees it.
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    sock: TcpStream,
    tls: ServerConnection,
    /// The handshake completed (counted once).
    established: bool,
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
        let mut tls = ServerConnection::new(config.clone())?;
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Transport::Tls(Box::new(TlsStream {
            sock,
            tls,
            established: false,
        })))
    }

    /// The socket, to register with the poll.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Reads plaintext into `buf`. `Ok(0)` is the end of the stream. A TLS
    /// read fills `buf` or drains the socket before it returns, so a short
    /// read still means "nothing more until the next readiness event".
    pub fn read(&mut self, buf: &mut [u8], events: &mut TlsEvents) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf, events),
        }
    }

    /// Takes plaintext from `slices`; returns how much was taken.
    /// `WouldBlock` when the socket takes nothing now.
    pub fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(slices),
            Transport::Tls(t) => t.write_vectored(slices),
        }
    }

    /// TLS records (handshake, alerts, encrypted frames) not yet on the socket.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.wants_write(),
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
            if t.established {
                t.tls.send_close_notify();
            }
            let _ = t.flush_records();
        }
    }
}

impl TlsStream {
    fn read(&mut self, buf: &mut [u8], events: &mut TlsEvents) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            // Plaintext rustls already holds comes first: its buffer is
            // bounded, and `read_tls` refuses more while it is full.
            match self.tls.reader().read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(0), // close_notify
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return done_or(filled, e),
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => return Ok(filled), // the peer closed the socket
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return done_or(filled, e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                events.failed = true;
                // rustls queued an alert saying why: let the peer see it.
                let _ = self.flush_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if !self.established && !self.tls.is_handshaking() {
                self.established = true;
                events.handshake_done = true;
            }
            if self.tls.wants_write() {
                // Handshake flights and key updates go out at once; what the
                // socket does not take is flushed at the end of the turn.
                self.flush_records()?;
            }
        }
    }

    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        // Records already encrypted go first: rustls holds at most
        // `TLS_BUFFER_LIMIT` of them.
        self.flush_records()?;
        if self.tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = self.tls.writer().write_vectored(slices)?;
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.flush_records()?;
        Ok(taken)
    }

    fn flush_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Plaintext already read is returned first; the end or error shows on the
/// next call (the socket stays at EOF, rustls keeps its error).
fn done_or(filled: usize, e: io::Error) -> io::Result<usize> {
    if filled > 0 {
        Ok(filled)
    } else {
        Err(e)
    }
}
