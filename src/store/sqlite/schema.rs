//! Opening the database: connection pragmas and schema migrations.

use std::fs;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::store::{Durability, StoreConfig, StoreError};

/// Safety valve: if the WAL still grows past this many pages (the
/// checkpointer cannot keep up), the writer checkpoints by itself.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 32_768;
/// After a WAL reset the file is truncated to this size, so one burst does
/// not keep its disk space forever.
const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Schema migrations: `MIGRATIONS[i]` upgrades `user_version` i to i + 1.
/// Append new steps; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE messages(
        room   TEXT    NOT NULL,
        seq    INTEGER NOT NULL,
        ts     INTEGER NOT NULL,
        sender TEXT    NOT NULL,
        name   TEXT    NOT NULL,
        body   TEXT    NOT NULL,
        PRIMARY KEY (room, seq)
     ) WITHOUT ROWID;
     CREATE TABLE rooms(
        room     TEXT    NOT NULL PRIMARY KEY,
        epoch    TEXT    NOT NULL,
        last_seq INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE read_markers(
        user TEXT    NOT NULL,
        room TEXT    NOT NULL,
        seq  INTEGER NOT NULL,
        PRIMARY KEY (user, room)
     ) WITHOUT ROWID;
     CREATE TABLE meta(key TEXT NOT NULL PRIMARY KEY, value);",
    // v2: whether the room is in the user's `rooms` list (joined and not
    // left, or a DM), kept apart from the read position.
    "ALTER TABLE read_markers ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;",
];

/// Opens/creates the file (creating parent dirs) as the writer's
/// connection and brings its schema up to date.
pub(super) fn open_writer(cfg: &StoreConfig) -> Result<Connection, StoreError> {
    if let Some(dir) = cfg.path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("create {}: {e}", dir.display())))?;
        }
    }
    let mut conn = open_connection(cfg)?;
    conn.execute_batch(&format!(
        "PRAGMA cache_size = -65536;
         PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES};
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
    ))?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&mut conn)?;
    Ok(conn)
}

/// A further connection to the (existing) file with the same pragmas.
pub(super) fn open_connection(cfg: &StoreConfig) -> Result<Connection, StoreError> {
    let conn = Connection::open(&cfg.path)
        .map_err(|e| StoreError::Unavailable(format!("open {}: {e}", cfg.path.display())))?;
    configure(&conn, cfg.durability)?;
    Ok(conn)
}

fn configure(conn: &Connection, durability: Durability) -> Result<(), StoreError> {
    // Only this process's store thread writes, but an operator's sqlite3
    // shell may briefly hold a lock.
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "cannot enable WAL (journal_mode is {mode})"
        )));
    }
    let sync = match durability {
        Durability::Sync => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    // The checkpointer must sync too: with synchronous=OFF it could let
    // the WAL be reset before the copied pages are on disk.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync};
         PRAGMA temp_store = MEMORY;"
    ))?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Schema(format!(
            "database schema version {version} is newer than this server's ({known})"
        )));
    }
    for step in version..known {
        migrate_step(conn, step)?;
    }
    Ok(())
}

/// Upgrades from `from` to `from + 1` atomically, version bump included.
fn migrate_step(conn: &mut Connection, from: i64) -> Result<(), StoreError> {
    let sql = usize::try_from(from)
        .ok()
        .and_then(|i| MIGRATIONS.get(i))
        .ok_or_else(|| StoreError::Schema(format!("no migration from version {from}")))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(sql)
        .map_err(|e| StoreError::Schema(format!("migration {from} -> {}: {e}", from + 1)))?;
    tx.pragma_update(None, "user_version", from + 1)?;
    tx.commit()?;
    tracing::info!(version = from + 1, "store schema migrated");
    Ok(())
}
