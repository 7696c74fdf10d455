//! corechat: a thread-per-core WebSocket chat server.
//!
//! Module map (see `docs/ARCHITECTURE.md`): `reactor` (the per-core event
//! loop: sockets, framing, timers), `app` (the seam: the hooks the reactor
//! calls and the port an app answers through), `chat` (rooms, DMs, presence:
//! the protocol's semantics, as an app), `echo` (the Autobahn echo app), `ws`
//! (RFC 6455 codec), `http` (requests on the same port), `bus` (links between
//! shards), `protocol` (request parsing), `store` (durable SQLite history),
//! `auth` (JWT), `limits` (admission and rate limits), `metrics`
//! (Prometheus), `config` (CLI, env and file), `server` (start-up and
//! shutdown), `tls` (certificates for
//! https:// and wss://), `web_assets` (the bundled browser client).

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod broker;
pub mod bus;
pub mod chat;
pub mod config;
pub mod echo;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod reactor;
pub mod server;
pub mod store;
pub mod tls;
pub mod web_assets;
pub mod ws;
