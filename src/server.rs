//! Start-up and shutdown: builds the listeners, shards, store and signal
//! handling, then waits.

use crate::auth::Authenticator;
use crate::bus::{BusMsg, ShardLink, INBOX_CAPACITY};
use crate::chat::{ChatShared, Preload};
use crate::config::{self, Config, StoreKind};
use crate::limits::IpLimiter;
use crate::metrics::ShardMetrics;
use crate::reactor::{Mode, Shard, Shared};
use crate::store::{self, SqliteStore, StoreConfig};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Token of each shard's waker (the reactor reserves it).
const WAKER_TOKEN: Token = Token(usize::MAX - 2);

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
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
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
    // The first listener fixes the port (which may be 0: any free port);
    // the others bind the same address.
    let first = reuseport_listener(cfg.listen, cfg.backlog)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(reuseport_listener(addr, cfg.backlog)?);
    }

    let mut store_owner = None;
    let chat = match mode {
        Mode::Echo => None,
        Mode::Chat => {
            let pem = match &cfg.jwt_public_key {
                Some(path) => {
                    Some(
                        std::fs::read(path).map_err(|source| ServerError::PublicKey {
                            path: path.clone(),
                            source,
                        })?,
                    )
                }
                None => None,
            };
            let auth =
                Authenticator::new(cfg.jwt_secret.as_deref().map(str::as_bytes), pem.as_deref())?;
            let mut preload = Preload::default();
            let mut handle = None;
            if let Some((st, h)) = open_store(&cfg)? {
                preload.rooms = st.load_rooms()?;
                preload.markers = st.load_read_markers()?;
                tracing::info!(rooms = preload.rooms.len(), path = %cfg.data_dir.display(), "store opened");
                handle = Some(h);
                store_owner = Some(st);
            }
            Some(ChatShared {
                auth,
                store: handle,
                guest: cfg.guest,
                node_id: cfg.node_id.clone(),
                preload: Mutex::new(Some(Arc::new(preload))),
            })
        }
    };

    let mut polls = Vec::with_capacity(n);
    let mut links = Vec::with_capacity(n);
    let mut inboxes = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        let (tx, rx) = crossbeam_channel::bounded::<Vec<BusMsg>>(INBOX_CAPACITY);
        polls.push(poll);
        links.push(ShardLink { tx, waker });
        inboxes.push(rx);
    }
    let shared = Arc::new(Shared {
        mode,
        ip_limiter: IpLimiter::new(cfg.max_conns_per_ip, cfg.max_upgrades_per_ip_per_sec),
        metrics: (0..n).map(|_| Arc::new(ShardMetrics::default())).collect(),
        links,
        shutdown: Default::default(),
        started: Instant::now(),
        chat,
        cfg: cfg.clone(),
    });

    let cores = if cfg.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut threads = Vec::with_capacity(n);
    for (i, ((poll, listener), inbox)) in polls.into_iter().zip(listeners).zip(inboxes).enumerate()
    {
        let shard = Shard::new(i, shared.clone(), poll, listener, inbox)?;
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
    // Drop the preload once every shard has taken its part.
    if let Some(chat) = &shared.chat {
        chat.preload.lock().take();
    }
    // Tests and scripts read this line to learn the port.
    println!("corechat listening on {addr} ({n} shards)");
    tracing::info!(%addr, shards = n, node = %cfg.node_id, "listening");

    wait_for_signal(&shared, &threads)?;
    shared.shutdown.store(true, Ordering::SeqCst);
    for link in &shared.links {
        let _ = link.waker.wake();
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some(st) = store_owner {
        drop(shared);
        st.shutdown()?;
        tracing::info!("store flushed");
    }
    tracing::info!("shut down");
    Ok(())
}

/// Blocks until SIGTERM or SIGINT (or every shard has stopped on its own).
fn wait_for_signal(
    shared: &Shared,
    threads: &[std::thread::JoinHandle<()>],
) -> Result<(), ServerError> {
    let mut poll = Poll::new()?;
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    poll.registry()
        .register(&mut signals, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(4);
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(500))) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        if let Some(sig) = signals.pending().next() {
            tracing::info!(signal = sig, "shutting down: closing connections with 1001");
            return Ok(());
        }
        if threads.iter().all(|t| t.is_finished()) || shared.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}
