//! corechat load generator: a lean, `mio`-based WebSocket client that drives the scenarios of
//! `BENCHMARKS.md` against corechat and its peers, and reports figures, HDR histograms and
//! interval logs.

pub mod abuse;
pub mod cli;
pub mod driver;
pub mod engine;
pub mod gate;
pub mod hosthealth;
pub mod jwt;
pub mod mock;
pub mod msgfast;
pub mod pacer;
pub mod proto;
pub mod report;
pub mod scenarios;
pub mod seq;
pub mod stats;
pub mod sys;
pub mod timeline;
pub mod tls;
pub mod ws;
