//! Start-up and shutdown: builds the listeners, shards, store and signal
//! handling, then waits.

use crate::app::App;
use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerConfig};
use crate::bus::{ShardLink, INBOX_CAPACITY};
use crate::chat::{ChatApp, ChatShared, Preload};
use crate::config::{self, Config, StoreKind};
use crate::echo::EchoApp;
use crate::limits::IpLimiter;
use crate::metrics::ShardMetrics;
use crate::reactor::{Shard, Shared, WAKER};
use crate::store::{self, SqliteStore, StoreConfig};
use crate::tls::{CertStore, TlsError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the process serves: the chat, or a bare echo for Autobahn.
pub enum Mode {
    Chat,
    Echo,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// StoreError's own text already names the store.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot read the public key {path}: {source}")]
    PublicKey {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// One `SO_REUSEPORT` listener; the kernel spreads connections over them.
fn reuseport_listener(addr: SocketAddr, backlog: i32) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Listen { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(backlog).map_err(err)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn open_store(cfg: &Config) -> Result<Option<(SqliteStore, store::StoreHandle)>, ServerError> {
    if cfg.store != StoreKind::Sqlite {
        return Ok(None);
    }
    let mut sc = StoreConfig::new(cfg.data_dir.join("corechat.db"));
    sc.durability = match cfg.durability {
        config::Durability::Sync => store::Durability::Sync,
        config::Durability::Relaxed => store::Durability::Relaxed,
    };
    sc.batch_max = cfg.batch_max;
    sc.batch_delay = Duration::from_micros(cfg.batch_delay_us);
    sc.retention_messages = cfg.retention_messages;
    sc.retention_age = cfg.retention_age;
    sc.retention_interval = cfg.retention_interval;
    let (st, handle) = SqliteStore::open(sc)?;
    Ok(Some((st, handle)))
}

/// Runs the server until SIGTERM/SIGINT, then drains and returns.
pub fn run(cfg: Config, mode: Mode) -> Result<(), ServerError> {
    let cfg = Arc::new(cfg);
    let n = cfg.shards;
    match mode {
        Mode::Echo => serve(cfg, (0..n).map(|_| EchoApp).collect(), None, None),
        Mode::Chat => {
            let (apps, store_owner, broker) = chat_apps(&cfg)?;
            serve(cfg, apps, store_owner, broker)
        }
    }
}

/// One chat app per shard, each given its part of what the store holds.
type ChatParts = (Vec<ChatApp>, Option<SqliteStore>, Option<Broker>);

fn chat_apps(cfg: &Arc<Config>) -> Result<ChatParts, ServerError> {
    let pem = match &cfg.jwt_public_key {
        Some(path) => Some(
            std::fs::read(path).map_err(|source| ServerError::PublicKey {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let auth = Authenticator::new(
        cfg.jwt_secret.as_deref().map(str::as_bytes),
        pem.as_deref(),
        cfg.jwt_leeway_s,
    )?;
    let mut preload = Preload::default();
    let mut handle = None;
    let mut store_owner = None;
    let sqlite = if cfg.redis.is_some() {
        if cfg.store == StoreKind::Sqlite {
            tracing::info!("cluster mode: history lives in Redis; the SQLite store is not used");
        }
        None
    } else {
        open_store(cfg)?
    };
    if let Some((st, h)) = sqlite {
        preload.rooms = st.load_rooms()?;
        preload.markers = st.load_read_markers()?;
        tracing::info!(rooms = preload.rooms.len(), path = %cfg.data_dir.display(), "store opened");
        handle = Some(h);
        store_owner = Some(st);
    }
    let shared = Arc::new(ChatShared::new(auth, handle, cfg));
    let mut apps: Vec<ChatApp> = (0..cfg.shards)
        .map(|i| {
            let mut app = ChatApp::new(i, cfg.shards, shared.clone(), cfg);
            app.apply_preload(&preload);
            app
        })
        .collect();
    let mut broker = None;
    if let Some(url) = &cfg.redis {
        let (sink, feeds) = crate::chat::cluster::sinks(cfg.shards);
        let mut bc = BrokerConfig::new(url.clone(), cfg.node_id.clone());
        // The stream is bounded even without a retention option: Redis
        // holds it in memory.
        if let Some(n) = cfg.retention_messages {
            bc.stream_maxlen = n;
        }
        if let Some(age) = cfg.retention_age {
            bc.retention_age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX).max(1);
        }
        let b = Broker::start(bc, sink)?;
        for (app, feed) in apps.iter_mut().zip(feeds) {
            app.attach_cluster(b.handle(), feed);
        }
        tracing::info!(node = %cfg.node_id, "cluster mode: broker started");
        broker = Some(b);
    }
    Ok((apps, store_owner, broker))
}

/// Binds the listeners, starts one pinned shard thread per app, and waits
/// for a signal; then drains the shards and flushes the store.
fn serve<A>(
    cfg: Arc<Config>,
    apps: Vec<A>,
    store_owner: Option<SqliteStore>,
    broker: Option<Broker>,
) -> Result<(), ServerError>
where
    A: App + Send + 'static,
{
    let n = apps.len();
    let certs = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(CertStore::load(cert, key)?)),
        _ => None,
    };
    let tls = certs.as_ref().map(|c| c.server_config()).transpose()?;
    // The first listener fixes the port (which may be 0: any free port);
    // the others bind the same address.
    let first = reuseport_listener(cfg.listen, cfg.backlog)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(reuseport_listener(addr, cfg.backlog)?);
    }

    let mut polls = Vec::with_capacity(n);
    let mut links = Vec::with_capacity(n);
    let mut inboxes = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::bounded::<Vec<A::Msg>>(INBOX_CAPACITY);
        polls.push(poll);
        links.push(ShardLink { tx, waker });
        inboxes.push(rx);
    }
    let links: Arc<[ShardLink<A::Msg>]> = links.into();
    let shared = Arc::new(Shared {
        ip_limiter: IpLimiter::new(cfg.max_conns_per_ip, cfg.max_upgrades_per_ip_per_sec),
        metrics: (0..n).map(|_| Arc::new(ShardMetrics::default())).collect(),
        shutdown: Default::default(),
        started: Instant::now(),
        cfg: cfg.clone(),
        tls,
    });

    let cores = if cfg.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut threads = Vec::with_capacity(n);
    let parts = polls.into_iter().zip(listeners).zip(inboxes).zip(apps);
    for (i, (((poll, listener), inbox), app)) in parts.enumerate() {
        let shard = Shard::new(i, shared.clone(), links.clone(), app, poll, listener, inbox)?;
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        let t = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = i, "could not pin to core {}", core.id);
                    }
                }
                shard.run();
            })?;
        threads.push(t);
    }
    // Tests and scripts read this line to learn the port.
    let plural = if n == 1 { "shard" } else { "shards" };
    let scheme = if certs.is_some() { " with TLS" } else { "" };
    println!("corechat listening on {addr}{scheme} ({n} {plural})");
    tracing::info!(%addr, shards = n, node = %cfg.node_id, tls = certs.is_some(), "listening");

    wait_for_signal(&shared, &threads, certs.as_deref())?;
    shared.shutdown.store(true, Ordering::SeqCst);
    for link in links.iter() {
        let _ = link.waker.wake();
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some(b) = broker {
        // Removes this node's presence (user_left to the other nodes).
        b.shutdown();
        tracing::info!("broker stopped");
    }
    if let Some(st) = store_owner {
        drop(shared);
        drop(links);
        st.shutdown()?;
        tracing::info!("store flushed");
    }
    tracing::info!("shut down");
    Ok(())
}

/// Blocks until SIGTERM or SIGINT (or every shard has stopped on its own).
/// SIGHUP reloads the TLS certificate: new handshakes get the new one, open
/// connections keep theirs; a pair that does not load leaves the old one.
fn wait_for_signal(
    shared: &Shared,
    threads: &[std::thread::JoinHandle<()>],
    certs: Option<&CertStore>,
) -> Result<(), ServerError> {
    let mut poll = Poll::new()?;
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    poll.registry()
        .register(&mut signals, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(4);
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(500))) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        for sig in signals.pending() {
            if sig == SIGHUP {
                reload_certificate(certs);
                continue;
            }
            tracing::info!(signal = sig, "shutting down: closing connections with 1001");
            return Ok(());
        }
        if threads.iter().all(|t| t.is_finished()) || shared.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

fn reload_certificate(certs: Option<&CertStore>) {
    match certs.map(CertStore::reload) {
        None => tracing::info!("SIGHUP: no --tls-cert, nothing to reload"),
        Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
        Some(Err(e)) => {
            tracing::error!("SIGHUP: TLS certificate not reloaded, keeping the old one: {e}")
        }
    }
}
