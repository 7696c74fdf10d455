//! corechat: a thread-per-core WebSocket chat server.
//!
//! Module map: `reactor` (the per-core event loop), `ws` (RFC 6455 codec),
//! `http` (requests on the same port), `conn` (connection state), `bus`
//! (messages between shards), `chat` (rooms, DMs, presence: the protocol's
//! semantics), `protocol` (request parsing and frame encoding), `store`
//! (durable SQLite history), `auth` (JWT), `limits` (admission and rate
//! limits), `metrics` (Prometheus), `config` (CLI, env and file), `server`
//! (start-up and shutdown), `web_assets` (the bundled browser client).

pub mod auth;
pub mod bus;
pub mod chat;
pub mod config;
pub mod conn;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod reactor;
pub mod server;
pub mod store;
pub mod web_assets;
pub mod ws;
