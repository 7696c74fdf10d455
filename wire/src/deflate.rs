//! permessage-deflate payloads (RFC 7692 section 7.2): raw DEFLATE with
//! the `00 00 ff ff` tail of a sync flush removed on the wire.
//!
//! [`Deflater`] compresses one message; [`Inflater`] expands one with a hard
//! output bound, so a small compressed frame that would expand to gigabytes
//! (a decompression bomb) fails as [`InflateError::TooBig`] after at most
//! `max + 1` bytes were ever allocated. Backend: flate2 over zlib-rs (pure
//! Rust), which, unlike miniz_oxide, honours window sizes below 15 bits.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The tail a sync flush ends with; removed by the sender, put back by the
/// receiver (RFC 7692 7.2.1, 7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Why a compressed message could not be expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The message expands past the caller's bound (close 1009).
    TooBig,
    /// Not a valid DEFLATE stream (close 1007).
    Corrupt,
}

/// The window flate2/zlib accepts for raw DEFLATE: zlib refuses 8 bits for a
/// raw compressor, and a 9-bit compressor never reaches back more than 250
/// bytes, within what a peer limited to 8 bits can hold.
fn zlib_window(bits: u8) -> u8 {
    bits.clamp(9, 15)
}

/// A raw DEFLATE compressor for whole messages.
pub struct Deflater {
    c: Compress,
}

impl Deflater {
    /// A compressor whose back-references stay within `window_bits` (8-15).
    /// Level 3: on short JSON nearly the ratio of level 6 at less CPU.
    pub fn new(window_bits: u8) -> Deflater {
        Deflater {
            c: Compress::new_with_window_bits(Compression::new(3), false, zlib_window(window_bits)),
        }
    }

    /// Appends the compressed form of `payload` to `out`, without the tail.
    /// With `reset` the message stands alone (no context takeover).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>, reset: bool) {
        if reset {
            self.c.reset();
        }
        let start_in = self.c.total_in();
        let start_out = out.len();
        loop {
            // Spare room for the output; compressed data rarely exceeds the
            // input by more than a few bytes per 16 KiB block.
            out.reserve(payload.len() / 2 + 64);
            let consumed = (self.c.total_in() - start_in) as usize;
            let result = self
                .c
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync);
            let done = (self.c.total_in() - start_in) as usize == payload.len();
            // A sync flush is complete when it left output space unused.
            if result.is_err() || (done && out.len() < out.capacity()) {
                break;
            }
        }
        if out[start_out..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start_out {
            // Nothing was pending (an empty message after a flush): the tail
            // the receiver appends needs the header bits of an empty stored
            // block in front of it (RFC 7692 7.2.3.6).
            out.push(0x00);
        }
    }
}

/// A raw DEFLATE decompressor for whole messages, with bounded output.
pub struct Inflater {
    d: Decompress,
    /// The last message ended its DEFLATE stream (BFINAL): the next one
    /// starts a new stream even with context takeover.
    ended: bool,
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            // Always the largest window: it decodes what any smaller one made.
            d: Decompress::new_with_window_bits(false, 15),
            ended: false,
        }
    }

    /// Appends the expansion of one message's compressed payload to `out`.
    /// `out` never holds more than `max + 1` bytes (capacity included):
    /// past `max`, the result is [`InflateError::TooBig`]. With `reset` the
    /// message is decoded alone (the peer uses no context takeover).
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        reset: bool,
    ) -> Result<(), InflateError> {
        if reset || self.ended {
            self.d.reset(false);
            self.ended = false;
        }
        let limit = out.len().saturating_add(max).saturating_add(1);
        let base = out.len();
        for chunk in [input, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() >= limit {
                        return Err(InflateError::TooBig);
                    }
                    // Grow geometrically, never past the bound.
                    let grow = (out.len() - base).max(chunk.len() * 2).max(1024);
                    out.reserve_exact(grow.min(limit - out.len()));
                }
                let (in_before, out_before) = (self.d.total_in(), out.len());
                let status = self
                    .d
                    .decompress_vec(&chunk[pos..], out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                pos += (self.d.total_in() - in_before) as usize;
                if out.len() - base > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // BFINAL: the message is whole; what follows (at most
                    // the tail we added) is not part of it.
                    self.ended = true;
                    return Ok(());
                }
                let room_left = out.len() < out.capacity();
                if pos == chunk.len() && room_left {
                    break;
                }
                let progressed = self.d.total_in() != in_before || out.len() != out_before;
                if !progressed && room_left {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(())
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: &[u8], reset: bool) {
        let mut d = Deflater::new(15);
        let mut i = Inflater::new();
        for _ in 0..3 {
            let mut z = Vec::new();
            d.compress(msg, &mut z, reset);
            let mut out = Vec::new();
            i.inflate(&z, &mut out, msg.len(), reset).unwrap();
            assert_eq!(out, msg);
        }
    }

    #[test]
    fn messages_round_trip_with_and_without_context() {
        for msg in [&b""[..], b"a", b"hello hello hello hello", &[7u8; 100_000]] {
            round_trip(msg, true);
            round_trip(msg, false);
        }
    }

    #[test]
    fn rfc7692_hello_examples() {
        // 7.2.3.1: "Hello" compressed, tail removed.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut out = Vec::new();
        Inflater::new().inflate(&hello, &mut out, 5, true).unwrap();
        assert_eq!(out, b"Hello");
        // 7.2.3.4: uncompressed (stored) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        let mut out = Vec::new();
        Inflater::new().inflate(&stored, &mut out, 5, true).unwrap();
        assert_eq!(out, b"Hello");
        // 7.2.3.5: BFINAL set, then the next message still decodes.
        let fin = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        let mut i = Inflater::new();
        let mut out = Vec::new();
        i.inflate(&fin, &mut out, 5, false).unwrap();
        assert_eq!(out, b"Hello");
        out.clear();
        i.inflate(&hello, &mut out, 5, false).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn bomb_stops_at_the_bound() {
        let mut z = Vec::new();
        Deflater::new(15).compress(&vec![0u8; 10 << 20], &mut z, true);
        assert!(z.len() < 20_000, "{}", z.len());
        let mut out = Vec::new();
        let max = 64 * 1024;
        assert_eq!(
            Inflater::new().inflate(&z, &mut out, max, true),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= max + 1, "{}", out.capacity());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let mut out = Vec::new();
        let r = Inflater::new().inflate(&[0xff, 0xff, 0xff, 0x00], &mut out, 1000, true);
        assert_eq!(r, Err(InflateError::Corrupt));
    }

    #[test]
    fn small_windows_round_trip() {
        let msg: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        for bits in 8..=15 {
            let mut z = Vec::new();
            Deflater::new(bits).compress(&msg, &mut z, true);
            let mut out = Vec::new();
            Inflater::new()
                .inflate(&z, &mut out, msg.len(), true)
                .unwrap();
            assert_eq!(out, msg);
        }
    }
}
