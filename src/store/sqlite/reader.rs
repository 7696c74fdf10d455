//! Read queries: history/resume ranges and the read-marker preload.

use rusqlite::{params, Connection};

use super::{bound, from_i64, RangeResult, ReadMarker, StoreError};
use crate::store::{RangeQuery, StoredMessage};

const SQL_RANGE_UP: &str = "SELECT seq, ts, sender, name, body FROM messages
     WHERE room = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4";
const SQL_RANGE_DOWN: &str = "SELECT seq, ts, sender, name, body FROM messages
     WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";

/// Every read marker (user, room, seq, listed).
pub(super) fn read_markers(conn: &Connection) -> Result<Vec<ReadMarker>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT user, room, seq, listed FROM read_markers")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push((
            row.get(0)?,
            row.get(1)?,
            from_i64(row.get(2)?, "seq")?,
            row.get::<_, i64>(3)? != 0,
        ));
    }
    Ok(out)
}

/// One range read (see [`RangeQuery`]); sees committed rows only.
pub(super) fn query_range(conn: &Connection, room: &str, q: RangeQuery) -> RangeResult {
    // One extra row tells whether more exist in the read direction.
    let fetch = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
    let before = q.before.map_or(i64::MAX, bound);
    let mut out = Vec::new();
    let ascending = q.after.is_some();
    {
        let mut stmt;
        let mut rows = match q.after {
            Some(after) => {
                stmt = conn.prepare_cached(SQL_RANGE_UP)?;
                stmt.query(params![room, bound(after), before, fetch])?
            }
            None => {
                stmt = conn.prepare_cached(SQL_RANGE_DOWN)?;
                stmt.query(params![room, before, fetch])?
            }
        };
        while let Some(row) = rows.next()? {
            out.push(StoredMessage {
                room: room.to_owned(),
                seq: from_i64(row.get(0)?, "seq")?,
                ts: from_i64(row.get(1)?, "ts")?,
                from: row.get(2)?,
                name: row.get(3)?,
                body: row.get(4)?,
            });
        }
    }
    let has_more = out.len() > q.limit;
    out.truncate(q.limit);
    if !ascending {
        out.reverse();
    }
    Ok((out, has_more))
}
