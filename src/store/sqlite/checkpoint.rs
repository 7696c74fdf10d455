//! Background WAL checkpointer: its own connection and thread, so the
//! writer never pays for copying WAL pages into the database file.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;

use super::schema::open_connection;
use crate::store::{StoreConfig, StoreError};

/// Checkpoints run on their own thread, at most this often, so the writer
/// never stalls copying WAL pages into the database file; waiting lets one
/// checkpoint write a page once for many commits.
const CHECKPOINT_PERIOD: Duration = Duration::from_millis(200);

/// Background WAL checkpointer with its own connection. A PASSIVE
/// checkpoint never blocks the writer, so commits do not pay for copying
/// pages into the main file.
pub(super) struct Checkpointer {
    nudge: Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(cfg: &StoreConfig) -> Result<Checkpointer, StoreError> {
        let conn = open_connection(cfg)?;
        // One slot: nudges coalesce while a checkpoint runs.
        let (nudge, rx) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("corechat-store-ckpt".into())
            .spawn(move || checkpoint_loop(conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("spawn checkpointer: {e}")))?;
        Ok(Checkpointer { nudge, thread })
    }

    /// Called after each commit; never blocks.
    pub(super) fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    pub(super) fn stop(self) {
        drop(self.nudge);
        if self.thread.join().is_err() {
            tracing::error!("store checkpointer panicked");
        }
    }
}

/// Runs until the writer drops the nudge sender.
fn checkpoint_loop(conn: Connection, rx: Receiver<()>) {
    let mut failing = false;
    while rx.recv().is_ok() {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => failing = false,
            Err(e) => {
                // Disk trouble shows up in the writer's commits; log once.
                if !failing {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
                failing = true;
            }
        }
        let rest_until = Instant::now() + CHECKPOINT_PERIOD;
        loop {
            match rx.recv_deadline(rest_until) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}
