//! permessage-deflate (RFC 7692) on a shard: what a connection negotiated,
//! the shard's shared compressor and decompressor, and the choice of frame
//! per recipient. The framing stays in `io`; the DEFLATE codec and the offer
//! parsing are in the wire crate.
//!
//! Memory: a connection that negotiated compression holds a few bytes of
//! parameters. Only a client that keeps its compression context across
//! messages (no `client_no_context_takeover`) needs its own inflate state
//! (a 32 KiB window and the decoder, ~40 KiB), made on its first compressed
//! message and kept while it lives: the window is the state the next
//! message refers to. Everything else is per shard.

use crate::config::Config;
use crate::metrics::{self, ShardMetrics};
use crate::ws::{self, close_code, CloseError, OpCode, SharedFrame};
use bytes::Bytes;
use corechat_wire::deflate::{Deflater, InflateError, Inflater};
use corechat_wire::extension::{self, Params};

/// A decompressed-message buffer larger than this is not kept for the next
/// message (Autobahn sends up to 16 MiB; chat messages are small).
const KEEP_OUT_BYTES: usize = 256 * 1024;

/// What a connection negotiated; boxed on it only when it did.
pub struct ConnDeflate {
    pub params: Params,
    /// The client's context (it does not reset between messages).
    inflater: Option<Box<Inflater>>,
    /// Opcode of a compressed fragmented message being assembled.
    pub assembling: Option<OpCode>,
}

impl ConnDeflate {
    pub fn new(params: Params) -> ConnDeflate {
        ConnDeflate {
            params,
            inflater: None,
            assembling: None,
        }
    }
}

/// The answer to a client's `Sec-WebSocket-Extensions`: what the connection
/// gets and the response header value, or `None` (plain connection).
pub fn negotiate(cfg: &Config, offer: Option<&str>) -> Option<(Box<ConnDeflate>, String)> {
    if !cfg.compression {
        return None;
    }
    let (params, response) = extension::negotiate(offer?, cfg.compression_client_context)?;
    Some((Box::new(ConnDeflate::new(params)), response))
}

/// A shard's compression state, shared by its connections.
pub struct ShardDeflate {
    /// Compressor for shared frames (full 15-bit window).
    deflater: Deflater,
    /// Compressors for clients that limited the server's window (9-14 bits;
    /// 8 uses 9, see `wire::deflate`), made on first need.
    small: [Option<Box<Deflater>>; 6],
    /// Decoder for clients without context takeover: reset per message.
    inflater: Inflater,
    /// The last decompressed message, reused.
    pub(super) out: Vec<u8>,
    pub min_bytes: usize,
}

impl ShardDeflate {
    pub fn new(min_bytes: usize) -> ShardDeflate {
        ShardDeflate {
            deflater: Deflater::new(15),
            small: Default::default(),
            inflater: Inflater::new(),
            out: Vec::new(),
            min_bytes,
        }
    }

    /// The frame for one recipient: the shared compressed frame when it
    /// negotiated compression and the frame is worth compressing, else the
    /// plain one.
    pub fn frame_for(
        &mut self,
        conn: Option<&ConnDeflate>,
        frame: &SharedFrame,
        metrics: &ShardMetrics,
    ) -> Bytes {
        let Some(conn) = conn else {
            return frame.plain().clone();
        };
        let bits = conn.params.server_max_window_bits;
        let compressed = if bits >= 15 {
            frame
                .compressed(self.min_bytes, &mut self.deflater, || {
                    metrics::inc(&metrics.frames_compressed)
                })
                .cloned()
        } else {
            // A window this client asked for: compressed for it alone.
            let slot = &mut self.small[usize::from(bits.clamp(9, 14) - 9)];
            let deflater = slot.get_or_insert_with(|| Box::new(Deflater::new(bits)));
            let compressed = frame.compress_alone(self.min_bytes, deflater);
            if compressed.is_some() {
                metrics::inc(&metrics.frames_compressed);
            }
            compressed
        };
        compressed.unwrap_or_else(|| frame.plain().clone())
    }

    /// Expands one compressed message of `conn` into `self.out`, bounded by
    /// `max` bytes: a bigger expansion (a decompression bomb) is 1009 and is
    /// never allocated.
    pub fn inflate(
        &mut self,
        conn: &mut ConnDeflate,
        opcode: OpCode,
        input: &[u8],
        max: usize,
    ) -> Result<(), CloseError> {
        let out = &mut self.out;
        out.clear();
        if out.capacity() > KEEP_OUT_BYTES {
            *out = Vec::new();
        }
        let result = if conn.params.client_no_context_takeover {
            self.inflater.inflate(input, out, max, true)
        } else {
            conn.inflater
                .get_or_insert_with(|| Box::new(Inflater::new()))
                .inflate(input, out, max, false)
        };
        result.map_err(|e| match e {
            InflateError::TooBig => CloseError::new(close_code::TOO_BIG, "message too big"),
            InflateError::Corrupt => {
                CloseError::new(close_code::INVALID_UTF8, "invalid compressed data")
            }
        })?;
        if opcode == OpCode::Text && std::str::from_utf8(out).is_err() {
            return Err(CloseError::new(close_code::INVALID_UTF8, "invalid utf-8"));
        }
        Ok(())
    }
}

impl SharedFrame {
    /// A compressed copy for one connection (not shared): for clients that
    /// limited the server's window below the shared compressor's.
    fn compress_alone(&self, min_bytes: usize, deflater: &mut Deflater) -> Option<Bytes> {
        let (opcode, payload) = self.parts();
        if payload.is_empty() || payload.len() < min_bytes || opcode.is_control() {
            return None;
        }
        Some(ws::compressed_frame(deflater, opcode, payload))
    }
}
