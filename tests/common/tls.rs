//! TLS test helpers: self-signed certificates (rcgen), a rustls client
//! that trusts exactly the given certificates, an https:// GET and a wss://
//! chat client (tungstenite over rustls over a std TcpStream).

use super::{token, Server};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tungstenite::{Message, WebSocket};

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for `localhost` and its key.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Pair {
    pub fn generate() -> Pair {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        Pair {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
            der: ck.cert.der().clone(),
        }
    }

    /// Writes the pair as `tls.crt` / `tls.key` in `dir` (overwriting).
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// Starts the server with `--tls-cert`/`--tls-key` from `dir` plus `extra`.
pub fn start_tls(dir: &Path, pair: &Pair, extra: &[&str]) -> Server {
    let (cert, key) = pair.write(dir);
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A client config trusting `trusted` only, offering ALPN `alpn`.
pub fn client_config(trusted: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Connects and completes the TLS handshake (SNI `localhost`).
pub fn tls_connect(addr: &str, cfg: &Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    tls_over(sock, cfg)
}

/// Completes the TLS handshake over `sock` (SNI `localhost`).
pub fn tls_over<S: Read + Write>(
    mut sock: S,
    cfg: &Arc<ClientConfig>,
) -> std::io::Result<StreamOwned<ClientConnection, S>> {
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// A client socket whose traffic the test shapes: writes cut into pieces
/// of at most `piece` bytes, each sent on its own (TCP_NODELAY, a pause
/// between them, so the server reads records in parts), or held back until
/// the test releases them; reads of at most `read_piece` bytes.
pub struct Valve {
    sock: TcpStream,
    state: Arc<Mutex<ValveState>>,
}

/// How a `Valve` cuts traffic.
#[derive(Clone, Copy)]
pub struct Shape {
    pub piece: usize,
    pub read_piece: usize,
    /// SO_RCVBUF before connecting (0: the kernel's, which grows): a small
    /// one makes the server's writes block while the client lags.
    pub rcvbuf: usize,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            piece: usize::MAX,
            read_piece: usize::MAX,
            rcvbuf: 0,
        }
    }
}

struct ValveState {
    shape: Shape,
    holding: bool,
    held: Vec<u8>,
}

/// The test's end of a `Valve`.
pub struct ValveControl {
    sock: TcpStream,
    state: Arc<Mutex<ValveState>>,
}

impl Valve {
    pub fn connect(addr: &str, shape: Shape) -> (Valve, ValveControl) {
        use socket2::{Domain, Socket, Type};
        let addr: std::net::SocketAddr = addr.parse().expect("address");
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        if shape.rcvbuf > 0 {
            sock.set_recv_buffer_size(shape.rcvbuf).expect("SO_RCVBUF");
        }
        sock.connect(&addr.into()).expect("connect");
        let sock: TcpStream = sock.into();
        sock.set_nodelay(true).expect("nodelay");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let state = Arc::new(Mutex::new(ValveState {
            shape,
            holding: false,
            held: Vec::new(),
        }));
        let control = ValveControl {
            sock: sock.try_clone().expect("clone socket"),
            state: state.clone(),
        };
        (Valve { sock, state }, control)
    }
}

impl Read for Valve {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.state.lock().unwrap().shape.read_piece);
        self.sock.read(&mut buf[..n])
    }
}

impl Write for Valve {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.state.lock().unwrap();
        if st.holding {
            st.held.extend_from_slice(buf);
            return Ok(buf.len());
        }
        let n = buf.len().min(st.shape.piece);
        self.sock.write_all(&buf[..n])?;
        if n < buf.len() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ValveControl {
    /// Writes are held back from now on.
    pub fn hold(&self) {
        self.state.lock().unwrap().holding = true;
    }

    /// Bytes held back so far.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held.len()
    }

    /// Sends the first `n` held bytes in one write; the rest stays held.
    pub fn release(&mut self, n: usize) {
        let mut st = self.state.lock().unwrap();
        let out: Vec<u8> = st.held.drain(..n).collect();
        self.sock.write_all(&out).expect("release held bytes");
    }

    /// Sends everything held and stops holding.
    pub fn open(&mut self) {
        let n = self.held();
        self.release(n);
        self.state.lock().unwrap().holding = false;
    }
}

/// The certificate the server presented.
pub fn peer_cert(stream: &TlsStream) -> CertificateDer<'static> {
    stream.conn.peer_certificates().expect("peer certificates")[0].clone()
}

/// `GET path` over https://; returns (status, body).
pub fn https_get(addr: &str, cfg: &Arc<ClientConfig>, path: &str) -> (u16, String) {
    let mut s = tls_connect(addr, cfg).expect("tls connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send request");
    let mut resp = Vec::new();
    // The server ends with close_notify; a bare EOF would be an error here.
    s.read_to_end(&mut resp).expect("read response");
    super::parse_response(&resp)
}

/// Sum of the `/metrics` lines of `name` whose labels contain `labels`.
pub fn https_metric(addr: &str, cfg: &Arc<ClientConfig>, name: &str, labels: &str) -> f64 {
    let (_, text) = https_get(addr, cfg, "/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A chat client over wss:// (over a plain socket, or any other stream).
pub struct WssClient<S: Read + Write = TlsStream> {
    pub ws: WebSocket<S>,
}

impl WssClient {
    /// Connects `user` and reads its `welcome`.
    pub fn connect(addr: &str, cfg: &Arc<ClientConfig>, user: &str) -> WssClient {
        let stream = tls_connect(addr, cfg).expect("tls connect");
        WssClient::over(stream, user)
    }
}

impl<S: Read + Write> WssClient<S> {
    /// Upgrades `stream` (TLS already up) for `user` and reads its `welcome`.
    pub fn over(stream: S, user: &str) -> WssClient<S> {
        let url = format!("wss://localhost/ws?token={}", token(user));
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("websocket upgrade");
        let mut c = WssClient { ws };
        let w = c.recv_json();
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    pub fn stream(&self) -> &S {
        self.ws.get_ref()
    }

    pub fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
                Message::Close(c) => panic!("unexpected close: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of type `ty`, skipping others.
    pub fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv_json();
            assert_ne!(v["type"], "error", "unexpected error: {v}");
            if v["type"] == ty {
                return v;
            }
        }
    }

    pub fn join(&mut self, room: &str) -> Value {
        self.send_json(serde_json::json!({"type": "join", "room": room, "id": "j"}));
        self.recv_type("joined")
    }

    /// Publishes `body` to `room` and waits for its ack.
    pub fn publish(&mut self, room: &str, body: &str, id: &str) -> Value {
        self.send_json(
            serde_json::json!({"type": "publish", "room": room, "body": body, "id": id}),
        );
        self.recv_type("ack")
    }
}
