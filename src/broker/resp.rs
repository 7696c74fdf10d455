//! A minimal RESP2 codec for the subscriber connection. The command
//! connection uses the `redis` crate; the subscriber reads with a short
//! timeout (to take subscribe requests between reads) and so needs a parser
//! that keeps a partly received reply across reads, which is what this is.

use bytes::Bytes;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The text of a bulk or simple string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) => Some(s),
            Resp::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Appends one command (an array of bulk strings) to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadResp;

/// Parses one reply from the start of `buf`: `Ok(None)` when it is not
/// complete yet, else the reply and the bytes it used.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Resp, usize)>, BadResp> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some(eol) = find_crlf(buf, 1) else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..eol]).map_err(|_| BadResp)?;
    let after = eol + 2;
    match kind {
        b'+' => Ok(Some((Resp::Simple(line.to_string()), after))),
        b'-' => Ok(Some((Resp::Error(line.to_string()), after))),
        b':' => Ok(Some((Resp::Int(line.parse().map_err(|_| BadResp)?), after))),
        b'$' => {
            let n: i64 = line.parse().map_err(|_| BadResp)?;
            if n < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            let n = usize::try_from(n).map_err(|_| BadResp)?;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(BadResp);
            }
            let data = Bytes::copy_from_slice(&buf[after..after + n]);
            Ok(Some((Resp::Bulk(Some(data)), after + n + 2)))
        }
        b'*' => {
            let n: i64 = line.parse().map_err(|_| BadResp)?;
            if n < 0 {
                return Ok(Some((Resp::Array(None), after)));
            }
            let mut items = Vec::with_capacity(usize::try_from(n.min(1024)).unwrap_or(0));
            let mut pos = after;
            for _ in 0..n {
                match parse(&buf[pos..])? {
                    Some((v, used)) => {
                        items.push(v);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(Some(items)), pos)))
        }
        _ => Err(BadResp),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_pieces() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhe\r\nl\r\n");
        wire.extend_from_slice(b":12\r\n+OK\r\n-ERR no\r\n$-1\r\n");
        for cut in 0..38 {
            assert_eq!(parse(&wire[..cut]).unwrap(), None, "cut {cut}");
        }
        let (v, used) = parse(&wire).unwrap().unwrap();
        assert_eq!(
            v,
            Resp::Array(Some(vec![
                Resp::Bulk(Some(Bytes::from_static(b"message"))),
                Resp::Bulk(Some(Bytes::from_static(b"chan"))),
                Resp::Bulk(Some(Bytes::from_static(b"he\r\nl"))),
            ]))
        );
        let rest = &wire[used..];
        let (v, u) = parse(rest).unwrap().unwrap();
        assert_eq!(v, Resp::Int(12));
        let rest = &rest[u..];
        let (v, u) = parse(rest).unwrap().unwrap();
        assert_eq!(v, Resp::Simple("OK".into()));
        let rest = &rest[u..];
        let (v, u) = parse(rest).unwrap().unwrap();
        assert_eq!(v, Resp::Error("ERR no".into()));
        assert_eq!(parse(&rest[u..]).unwrap().unwrap().0, Resp::Bulk(None));
        assert_eq!(parse(b"?x\r\n"), Err(BadResp));
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SUBSCRIBE", b"a b"]);
        assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$3\r\na b\r\n");
    }
}
