//! TLS over a non-blocking socket with rustls's unbuffered API, so that an
//! idle connection owns no buffer: only rustls's state (keys, handshake
//! state) stays between reads.
//!
//! Reads: TLS records go from the socket into the shard's shared read
//! buffer, behind `HEADROOM`; rustls decrypts them there, and each record's
//! plaintext is copied to the front of the same buffer, where the reactor
//! parses it as it parses a plain read. A record's plaintext is shorter
//! than the record, so the plaintext never reaches records not yet read.
//! Only the bytes of an incomplete record (or handshake message) are kept
//! per connection, in a buffer of their exact size, freed on the next read.
//!
//! Writes: queued frames (shared `Bytes`) are gathered into one piece in a
//! scratch buffer (the shard's read buffer, idle while flushing) so small
//! frames share records, encrypted into a per-connection buffer of at most
//! `WRITE_BATCH` plaintext, and written; that buffer is dropped as soon as
//! the socket took all of it. What is not encrypted stays in the frame
//! queue, where the slow-consumer check sees it.

use super::transport::TlsEvents;
use mio::net::TcpStream;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

/// Plaintext of one TLS record, at most (RFC 8446 5.1, RFC 5246 6.2.1).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Space kept in front of the records in the read buffer: one record's
/// plaintext, so the record being decrypted is never overwritten.
const HEADROOM: usize = MAX_RECORD_PLAINTEXT + 1024;
/// A record on the wire, at most (rustls refuses larger).
const MAX_RECORD_WIRE: usize = MAX_RECORD_PLAINTEXT + 2048 + 5;
/// Input held between reads, at most: a handshake message (rustls allows
/// 64 KiB) spread over records, or one incomplete record. Past it the
/// peer is sending nonsense (the buffered `ServerConnection` had the same
/// bound).
const MAX_HELD: usize = 0xffff + MAX_RECORD_WIRE;
/// Plaintext encrypted per write: the encrypted bytes one connection holds
/// while the socket does not take them are bounded by about this much.
const WRITE_BATCH: usize = 64 * 1024;
/// Record header and AEAD tag (and TLS 1.2's explicit nonce), generously;
/// rustls says how much it really needs when this is not enough.
const RECORD_OVERHEAD: usize = 64;
/// State steps a write may take before the connection is deemed broken
/// (each step encodes a queued handshake message); a read may take this
/// many more than it has bytes (each record consumed is 6 bytes or more).
const MAX_STEPS: usize = 256;

pub struct TlsStream {
    pub(super) sock: TcpStream,
    tls: UnbufferedServerConnection,
    /// Bytes of an incomplete record or handshake message from the last
    /// read (rustls has looked at them; they go back to it unchanged).
    held: Vec<u8>,
    /// Encrypted bytes the socket has not taken yet, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// The handshake completed (counted once).
    established: bool,
    /// The peer sent close_notify or closed the socket: reads return 0.
    read_done: bool,
    /// rustls failed: nothing more is asked of it.
    failed: bool,
}

impl TlsStream {
    pub fn new(sock: TcpStream, config: &Arc<ServerConfig>) -> Result<TlsStream, rustls::Error> {
        Ok(TlsStream {
            sock,
            tls: UnbufferedServerConnection::new(config.clone())?,
            held: Vec::new(),
            out: Vec::new(),
            sent: 0,
            established: false,
            read_done: false,
            failed: false,
        })
    }

    /// Reads plaintext into `buf` (the shard's read buffer, which also holds
    /// the records while they are decrypted). Returns once the socket is
    /// drained or half of `buf` is plaintext, so a short read means
    /// "nothing more until the next readiness event".
    pub fn read(&mut self, buf: &mut [u8], events: &mut TlsEvents) -> io::Result<usize> {
        if self.read_done || self.failed {
            return Ok(0);
        }
        // Room for the plaintext, the headroom and held input twice over,
        // so that moving held input down always leaves room to read.
        if buf.len() < 2 * (HEADROOM + MAX_HELD) {
            return Err(io::Error::other("read buffer too small for TLS"));
        }
        // Plaintext is in buf[..plain]; records not yet consumed in
        // buf[start..end], with plain + HEADROOM <= start.
        let mut plain = 0;
        let mut start = HEADROOM;
        let mut end = start + self.held.len();
        buf[start..end].copy_from_slice(&self.held);
        self.held = Vec::new();
        loop {
            if end == buf.len() {
                // Move the incomplete record down, behind the plaintext.
                let to = plain + HEADROOM;
                buf.copy_within(start..end, to);
                end -= start - to;
                start = to;
            }
            let room = buf.len() - end;
            let got = match self.sock.read(&mut buf[end..]) {
                Ok(0) => {
                    self.read_done = true;
                    0
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.held = buf[start..end].to_vec();
                    return done_or(plain, e);
                }
            };
            end += got;
            if let Err(e) = self.decrypt(buf, &mut start, end, &mut plain, events) {
                events.failed = true;
                return Err(self.fail(e, &mut buf[start..end]));
            }
            if end - start > MAX_HELD {
                events.failed = true;
                let e = io::Error::new(io::ErrorKind::InvalidData, "TLS input without end");
                return Err(self.fail(e, &mut []));
            }
            if self.read_done || got < room || plain >= buf.len() / 2 {
                break;
            }
        }
        if !self.read_done {
            // Exactly the bytes that wait for the rest of their record.
            self.held = buf[start..end].to_vec();
        }
        // Handshake flights and key updates go out at once; what the
        // socket does not take is flushed at the end of the turn.
        self.flush_records()?;
        match plain {
            0 if self.read_done => Ok(0),
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    /// Lets rustls consume the complete records in `buf[*start..end]`:
    /// plaintext is appended at `buf[*plain..]`, handshake messages to
    /// `self.out`. Stops when what is left is an incomplete record.
    fn decrypt(
        &mut self,
        buf: &mut [u8],
        start: &mut usize,
        end: usize,
        plain: &mut usize,
        events: &mut TlsEvents,
    ) -> io::Result<()> {
        for _ in 0..MAX_STEPS + (end - *start) {
            let (front, records) = buf.split_at_mut(*start);
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut records[..end - *start]);
            let mut blocked = false;
            match state.map_err(invalid)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid)?;
                        let to = *plain + record.payload.len();
                        // Cannot fail (HEADROOM holds a record's plaintext).
                        let dst = front.get_mut(*plain..to).ok_or_else(|| {
                            io::Error::new(io::ErrorKind::InvalidData, "TLS record too large")
                        })?;
                        dst.copy_from_slice(record.payload);
                        *plain = to;
                        discard += record.discard;
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut encode, &mut self.out)?
                }
                // Encoded into `self.out`, which goes out before anything
                // encrypted later.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    blocked = true
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.read_done = true;
                    blocked = true;
                }
                // Early data is off (`max_early_data_size` 0); others are new.
                _ => return Err(io::Error::other("unexpected TLS state")),
            }
            *start += discard;
            if !self.established && !self.tls.is_handshaking() {
                self.established = true;
                events.handshake_done = true;
            }
            if blocked {
                return Ok(());
            }
        }
        Err(io::Error::other("TLS input not consumed"))
    }

    /// After rustls failed: sends the alert it queued saying why (best
    /// effort) and asks nothing more of it. `input` is what it was given.
    fn fail(&mut self, e: io::Error, input: &mut [u8]) -> io::Error {
        self.failed = true;
        self.held = Vec::new();
        // Queued messages come out before rustls looks at `input` again.
        while self.tls.wants_write() {
            match self.tls.process_tls_records(input).state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(&mut encode, &mut self.out).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        let _ = self.flush_records();
        e
    }

    /// Encrypts plaintext from `slices` (up to `WRITE_BATCH`) and writes it;
    /// returns how much plaintext was taken. `WouldBlock` while encrypted
    /// bytes from before are still waiting for the socket.
    pub fn write_vectored(
        &mut self,
        slices: &[IoSlice<'_>],
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        if self.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.flush_records()?;
        if self.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let plaintext = gather(slices, scratch);
        if plaintext.is_empty() {
            return Ok(0);
        }
        let encrypted = self.with_write_traffic(|traffic, out| {
            append(out, plaintext.len(), |dst| traffic.encrypt(plaintext, dst))
        })?;
        if encrypted.is_none() {
            // Still handshaking: nothing may be sent yet.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.flush_records()?;
        Ok(plaintext.len())
    }

    /// Encrypted bytes (handshake, alerts, frames) not yet on the socket.
    pub fn wants_write(&self) -> bool {
        self.sent < self.out.len()
    }

    /// Writes pending encrypted bytes until done or the socket is full;
    /// once all are out the buffer is released.
    pub fn flush_records(&mut self) -> io::Result<()> {
        while self.wants_write() {
            match self.sock.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out.capacity() > 0 {
            self.out = Vec::new();
            self.sent = 0;
        }
        Ok(())
    }

    /// A close_notify, then what the socket takes (best effort).
    pub fn close_notify(&mut self) {
        if self.established && !self.failed {
            let _ = self.with_write_traffic(|traffic, out| {
                append(out, RECORD_OVERHEAD, |dst| traffic.queue_close_notify(dst))
            });
        }
        let _ = self.flush_records();
    }

    /// Runs `f` with rustls's encrypter and `self.out` once the connection
    /// may send application data, after encoding any message rustls has
    /// queued (they go first). `None`: the handshake is not that far yet.
    fn with_write_traffic(
        &mut self,
        mut f: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), EncryptError>,
    ) -> io::Result<Option<()>> {
        for _ in 0..MAX_STEPS {
            // `held` is an incomplete record at most: rustls reads nothing
            // from it, but it must see the same input as on the last read.
            let UnbufferedStatus { discard, state } = self.tls.process_tls_records(&mut self.held);
            let done = match state.map_err(invalid)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    Some(f(&mut traffic, &mut self.out).map_err(io::Error::other)?)
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut encode, &mut self.out)?;
                    None
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => return Ok(None),
                ConnectionState::PeerClosed => {
                    self.read_done = true;
                    None
                }
                ConnectionState::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                _ => return Err(io::Error::other("unexpected TLS state")),
            };
            self.held.drain(..discard);
            if done.is_some() {
                return Ok(done);
            }
        }
        Err(io::Error::other("TLS state did not settle"))
    }
}

/// The plaintext of the next write: the first slice alone, or the slices
/// copied one after another into `scratch`, up to `WRITE_BATCH` either way.
fn gather<'a>(slices: &'a [IoSlice<'a>], scratch: &'a mut [u8]) -> &'a [u8] {
    let limit = WRITE_BATCH.min(scratch.len());
    match slices {
        [] => &[],
        [first, ..] if slices.len() == 1 || limit < first.len() => {
            &first[..first.len().min(WRITE_BATCH)]
        }
        _ => {
            let mut n = 0;
            for slice in slices {
                let take = slice.len().min(limit - n);
                scratch[n..n + take].copy_from_slice(&slice[..take]);
                n += take;
                if n == limit {
                    break;
                }
            }
            &scratch[..n]
        }
    }
}

/// Appends to `out` what `put` writes into the room it is given: room for
/// `len` bytes plus record overhead first, then what rustls says it needs.
fn append<E: RequiredSize>(
    out: &mut Vec<u8>,
    len: usize,
    mut put: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), E> {
    let at = out.len();
    let records = len.div_ceil(MAX_RECORD_PLAINTEXT).max(1);
    let mut room = len + records * RECORD_OVERHEAD;
    loop {
        out.reserve_exact(room);
        out.resize(at + room, 0);
        match put(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(e) => {
                out.truncate(at);
                match e.required_size() {
                    Some(need) if need > room => room = need,
                    _ => return Err(e),
                }
            }
        }
    }
}

/// Encodes a handshake message (or alert) rustls queued.
fn encode_into(
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    append(out, 1024, |dst| encode.encode(dst)).map_err(io::Error::other)
}

/// rustls's "the buffer is too small, it takes this much".
trait RequiredSize {
    fn required_size(&self) -> Option<usize>;
}

impl RequiredSize for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(s) => Some(s.required_size),
            _ => None,
        }
    }
}

impl RequiredSize for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(s) => Some(s.required_size),
            _ => None,
        }
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Plaintext already read is returned first; the error shows on the next
/// call (the socket keeps it, or is at its end).
fn done_or(plain: usize, e: io::Error) -> io::Result<usize> {
    if plain > 0 {
        Ok(plain)
    } else {
        Err(e)
    }
}
