//! The WebSocket frame decoder on arbitrary bytes, as either end and with
//! or without RSV1 allowed, then fragment reassembly of what it parsed.
#![no_main]

use corechat_wire::{parse_frame_ext, Assembler, OpCode, Parse, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let sender = if flags & 1 == 0 { Role::Client } else { Role::Server };
    let rsv1_allowed = flags & 2 != 0;
    let max = 1usize << (flags >> 4);
    let mut buf = rest.to_vec();
    let mut pos = 0;
    let mut asm: Option<Assembler> = None;
    while pos < buf.len() {
        match parse_frame_ext(&mut buf[pos..], max, sender, rsv1_allowed) {
            Ok(Parse::Frame(h)) => {
                let total = h.total_len();
                assert!(total <= buf.len() - pos, "frame past the buffer");
                assert!(h.payload_len <= max, "frame over the bound");
                assert!(!h.rsv1 || rsv1_allowed);
                let payload = h.payload(&buf[pos..]).to_vec();
                match h.opcode {
                    OpCode::Text | OpCode::Binary if !h.fin => {
                        asm = Assembler::start(h.opcode, &payload, max).ok();
                    }
                    OpCode::Continuation => {
                        if let Some(a) = asm.as_mut() {
                            if a.extend(&payload, max).is_err() {
                                asm = None;
                            } else if h.fin {
                                let _ = a.finish();
                                asm = None;
                            }
                        }
                    }
                    OpCode::Close => {
                        let _ = corechat_wire::check_close_payload(&payload);
                    }
                    _ => {}
                }
                pos += total;
            }
            Ok(Parse::Incomplete { needed }) => {
                assert!(needed == 0 || needed > buf.len() - pos);
                break;
            }
            Err(_) => break,
        }
    }
});
