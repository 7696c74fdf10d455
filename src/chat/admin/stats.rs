//! What the operator's page shows, as plain data: each shard's part of
//! `GET /api/admin/stats`, the windows that turn counters into rates, and
//! the merge into one JSON answer on the shard that serves the request.

use crate::chat::{RoomName, Seq};
use serde_json::{json, Value};

/// Most rooms one stats answer lists (`?top=`).
pub const MAX_TOP_ROOMS: usize = 50;
/// Rooms listed without `?top=`.
pub const DEFAULT_TOP_ROOMS: usize = 10;

/// Length of one rate window: a room's rate covers the last one to two.
const WINDOW_MS: u64 = 5_000;

/// Messages counted in fixed windows of the shard clock: the current window
/// and the one before. 16 bytes per room, one add per committed message.
#[derive(Default, Clone, Copy, Debug)]
pub struct RateWindow {
    start_ms: u64,
    count: u32,
    prev: u32,
}

impl RateWindow {
    fn roll(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.start_ms);
        if elapsed < WINDOW_MS {
            return;
        }
        self.prev = if elapsed < 2 * WINDOW_MS {
            self.count
        } else {
            0
        };
        self.count = 0;
        self.start_ms = now_ms - elapsed % WINDOW_MS;
    }

    /// One more message at `now_ms` (shard clock).
    pub fn add(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.count = self.count.saturating_add(1);
    }

    /// Messages per second over the previous and the current window.
    pub fn per_sec(&self, now_ms: u64) -> f64 {
        let mut w = *self;
        w.roll(now_ms);
        let span_ms = WINDOW_MS + now_ms.saturating_sub(w.start_ms);
        f64::from(w.prev + w.count) * 1000.0 / span_ms as f64
    }
}

/// Fan-out latency percentiles (µs) of some span.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }

    fn json(&self) -> Value {
        json!({"count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max})
    }
}

/// The fan-out latency of the last full second, for the live chart. A small
/// histogram (2 significant digits, up to 10 s) reset every second; the
/// cumulative one behind `/metrics` is left alone.
pub struct LatencyWindow {
    current: hdrhistogram::Histogram<u64>,
    pub last: LatencySummary,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            current: hdrhistogram::Histogram::new_with_bounds(1, 10_000_000, 2)
                .expect("static histogram bounds are valid"),
            last: LatencySummary::default(),
        }
    }
}

impl LatencyWindow {
    pub fn record(&mut self, us: u64) {
        self.current.saturating_record(us.max(1));
    }

    /// Ends the second: its summary becomes `last`.
    pub fn rotate(&mut self) {
        self.last = LatencySummary::of(&self.current);
        self.current.reset();
    }
}

/// One shard's counters turned into per-second rates, once a second.
#[derive(Default)]
pub struct ShardRates {
    prev_deliveries: u64,
    prev_publishes: u64,
    pub deliveries_per_sec: u64,
    pub publishes_per_sec: u64,
}

impl ShardRates {
    /// Called about once a second (`elapsed_ms` since the last call) with
    /// the shard's running totals.
    pub fn update(&mut self, deliveries: u64, publishes: u64, elapsed_ms: u64) {
        let per_sec = |now: u64, prev: u64| now.saturating_sub(prev) * 1000 / elapsed_ms.max(1);
        self.deliveries_per_sec = per_sec(deliveries, self.prev_deliveries);
        self.publishes_per_sec = per_sec(publishes, self.prev_publishes);
        self.prev_deliveries = deliveries;
        self.prev_publishes = publishes;
    }
}

/// A room on its home shard.
#[derive(Clone, Debug)]
pub struct RoomStats {
    pub room: RoomName,
    /// Distinct users present.
    pub members: usize,
    /// Member connections on all shards.
    pub connections: u64,
    pub seq: Seq,
    pub msgs_per_sec: f64,
}

/// Busiest first: message rate, then members, then name.
fn busier(a: &RoomStats, b: &RoomStats) -> std::cmp::Ordering {
    b.msgs_per_sec
        .total_cmp(&a.msgs_per_sec)
        .then(b.members.cmp(&a.members))
        .then(a.room.cmp(&b.room))
}

/// Keeps the `top` busiest of `rooms`, sorted busiest first.
pub fn busiest(mut rooms: Vec<RoomStats>, top: usize) -> Vec<RoomStats> {
    if top == 0 {
        return Vec::new();
    }
    if rooms.len() > top {
        rooms.select_nth_unstable_by(top - 1, busier);
        rooms.truncate(top);
    }
    rooms.sort_unstable_by(busier);
    rooms
}

/// The `top` busiest of rooms offered one by one, holding at most
/// `2 * top` at a time (a shard may home many thousands of rooms).
pub struct TopRooms {
    top: usize,
    rooms: Vec<RoomStats>,
}

impl TopRooms {
    pub fn new(top: usize) -> Self {
        TopRooms {
            top,
            rooms: Vec::with_capacity(2 * top),
        }
    }

    pub fn offer(&mut self, room: RoomStats) {
        self.rooms.push(room);
        if self.rooms.len() >= 2 * self.top.max(1) {
            self.rooms = busiest(std::mem::take(&mut self.rooms), self.top);
        }
    }

    pub fn into_sorted(self) -> Vec<RoomStats> {
        busiest(self.rooms, self.top)
    }
}

/// One shard's part of the stats answer.
#[derive(Debug)]
pub struct ShardStats {
    pub shard: usize,
    /// Open connections (WebSocket and HTTP), from the shard's metrics.
    pub connections: u64,
    /// Open chat WebSockets.
    pub sessions: usize,
    /// Distinct users with a WebSocket on this shard.
    pub users: usize,
    /// Rooms whose home is this shard (DM rooms included).
    pub rooms: usize,
    pub deliveries_total: u64,
    pub deliveries_per_sec: u64,
    pub publishes_per_sec: u64,
    pub latency: LatencySummary,
    /// This shard's busiest non-DM rooms.
    pub top_rooms: Vec<RoomStats>,
}

/// The store (or broker) as the operator sees it.
#[derive(Debug, Default)]
pub struct StoreState {
    /// "sqlite", "memory" or "redis".
    pub kind: &'static str,
    pub ready: bool,
    /// Messages waiting for the group commit (SQLite only).
    pub queue_depth: Option<usize>,
    pub commits: Option<u64>,
    /// Unix ms of the last group commit (SQLite only).
    pub last_commit_ms: Option<u64>,
}

/// The answer of `GET /api/admin/stats`.
pub fn stats_json(
    mut parts: Vec<ShardStats>,
    store: &StoreState,
    top: usize,
    now_unix_ms: u64,
) -> String {
    parts.sort_by_key(|p| p.shard);
    let rooms = busiest(
        parts
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.top_rooms))
            .collect(),
        top,
    );
    let shards: Vec<Value> = parts
        .iter()
        .map(|p| {
            json!({
                "shard": p.shard,
                "connections": p.connections,
                "sessions": p.sessions,
                "users": p.users,
                "rooms": p.rooms,
                "deliveries_total": p.deliveries_total,
                "deliveries_per_sec": p.deliveries_per_sec,
                "publishes_per_sec": p.publishes_per_sec,
                "latency_us": p.latency.json(),
            })
        })
        .collect();
    let rooms: Vec<Value> = rooms
        .iter()
        .map(|r| {
            json!({
                "room": &*r.room,
                "members": r.members,
                "connections": r.connections,
                "seq": r.seq,
                "msgs_per_sec": (r.msgs_per_sec * 100.0).round() / 100.0,
            })
        })
        .collect();
    json!({
        "ts": now_unix_ms,
        "totals": {
            "connections": parts.iter().map(|p| p.connections).sum::<u64>(),
            "sessions": parts.iter().map(|p| p.sessions).sum::<usize>(),
            "deliveries_per_sec": parts.iter().map(|p| p.deliveries_per_sec).sum::<u64>(),
            "publishes_per_sec": parts.iter().map(|p| p.publishes_per_sec).sum::<u64>(),
        },
        "shards": shards,
        "rooms": rooms,
        "store": {
            "kind": store.kind,
            "ready": store.ready,
            "queue_depth": store.queue_depth,
            "commits": store.commits,
            "last_commit_ms": store.last_commit_ms,
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str, members: usize, rate: f64) -> RoomStats {
        RoomStats {
            room: name.into(),
            members,
            connections: members as u64,
            seq: 0,
            msgs_per_sec: rate,
        }
    }

    #[test]
    fn rate_window_counts_the_last_windows() {
        let mut w = RateWindow::default();
        for i in 0..50 {
            w.add(1_000 + i * 100); // 50 messages in 5 s: 10/s
        }
        let r = w.per_sec(6_000);
        assert!((8.0..=10.0).contains(&r), "{r}");
        // a quiet stretch of two windows forgets everything
        assert_eq!(w.per_sec(20_000), 0.0);
    }

    #[test]
    fn busiest_keeps_the_top_sorted() {
        let rooms = vec![
            room("a", 1, 0.0),
            room("b", 5, 0.0),
            room("c", 1, 3.0),
            room("d", 2, 1.0),
        ];
        let top: Vec<String> = busiest(rooms, 3)
            .iter()
            .map(|r| r.room.to_string())
            .collect();
        assert_eq!(top, ["c", "d", "b"]);
        assert!(busiest(vec![room("x", 1, 0.0)], 0).is_empty());
        let mut top = TopRooms::new(2);
        for i in 0..100u32 {
            top.offer(room(
                &format!("r{i:03}"),
                (i % 7) as usize,
                f64::from(i % 10),
            ));
        }
        let names: Vec<String> = top
            .into_sorted()
            .iter()
            .map(|r| r.room.to_string())
            .collect();
        // the rate-9 rooms (i = 9, 19, ..., 99) by members (i % 7): 69 has 6;
        // 19 and 89 have 5, and r019 sorts first
        assert_eq!(names, ["r069", "r019"]);
    }

    #[test]
    fn latency_window_summarizes_one_second() {
        let mut w = LatencyWindow::default();
        for us in [10, 20, 30, 40, 1000] {
            w.record(us);
        }
        w.rotate();
        assert_eq!(w.last.count, 5);
        assert_eq!(w.last.p50, 30);
        assert!(w.last.max >= 1000 && w.last.max < 1010, "{:?}", w.last);
        w.rotate();
        assert_eq!(w.last, LatencySummary::default());
    }

    #[test]
    fn stats_json_merges_shards_and_cuts_rooms() {
        let part = |shard, rooms| ShardStats {
            shard,
            connections: 3,
            sessions: 2,
            users: 2,
            rooms: 1,
            deliveries_total: 10,
            deliveries_per_sec: 4,
            publishes_per_sec: 1,
            latency: LatencySummary::default(),
            top_rooms: rooms,
        };
        let store = StoreState {
            kind: "memory",
            ready: true,
            ..Default::default()
        };
        let text = stats_json(
            vec![
                part(1, vec![room("b", 2, 1.0)]),
                part(0, vec![room("a", 1, 2.0), room("c", 1, 0.0)]),
            ],
            &store,
            2,
            42,
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["shards"][0]["shard"], 0);
        assert_eq!(v["totals"]["connections"], 6);
        assert_eq!(v["totals"]["deliveries_per_sec"], 8);
        let names: Vec<&str> = v["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["room"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(v["store"]["queue_depth"], Value::Null);
    }
}
