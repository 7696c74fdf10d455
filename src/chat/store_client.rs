//! The chat's side of the store: appends collected over a loop turn and
//! handed over as one request, range reads for history and replay, and the
//! completions that come back (on the store thread, via a channel and this
//! shard's waker). Without a store (`--store memory`) every call is a no-op
//! and history lives only in each room's ring.

use super::room::StoreOp;
use super::{ChatApp, ChatPort, RoomName, Seq};
use crate::broker::BrokerHandle;
use crate::store::{RangeQuery, StoreError, StoreHandle, StoredMessage};
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;

/// A store answer, delivered on the shard that asked.
pub(super) enum StoreDone {
    /// The group commit of one turn's appends: one result per message.
    Appended {
        batch: u64,
        results: Vec<Result<(), StoreError>>,
    },
    Ranged {
        op: u64,
        result: Result<(Vec<StoredMessage>, bool), StoreError>,
    },
}

pub(super) struct StoreClient {
    handle: Option<StoreHandle>,
    /// Cluster mode: ranges, listings and availability come from Redis.
    broker: Option<BrokerHandle>,
    next_op: u64,
    /// Range reads in flight and what they are for.
    ops: HashMap<u64, StoreOp>,
    /// Appends in flight: (room, seq) of each message of a batch, in order.
    batches: HashMap<u64, Vec<(RoomName, Seq)>>,
    turn_appends: Vec<StoredMessage>,
    turn_keys: Vec<(RoomName, Seq)>,
    turn_epochs: Vec<(String, String)>,
    /// Completions for this shard. Unbounded on purpose: each one answers a
    /// request this shard made, and those are bounded by the store's own
    /// bounded queue; a bounded channel here could deadlock the store thread.
    done_tx: Sender<StoreDone>,
    done_rx: Receiver<StoreDone>,
}

impl StoreClient {
    pub(super) fn new(handle: Option<StoreHandle>) -> Self {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        StoreClient {
            handle,
            broker: None,
            next_op: 1,
            ops: HashMap::new(),
            batches: HashMap::new(),
            turn_appends: Vec::new(),
            turn_keys: Vec::new(),
            turn_epochs: Vec::new(),
            done_tx,
            done_rx,
        }
    }

    /// Cluster mode: the broker replaces the store (history lives in Redis).
    pub(super) fn use_broker(&mut self, broker: BrokerHandle) {
        self.handle = None;
        self.broker = Some(broker);
    }

    /// Whether messages are stored (else the ring is all there is).
    pub(super) fn enabled(&self) -> bool {
        self.handle.is_some() || self.broker.is_some()
    }

    pub(super) fn is_available(&self) -> bool {
        self.handle.as_ref().is_none_or(|s| s.is_available())
    }

    /// Adds a numbered message to this turn's append request.
    pub(super) fn queue_append(&mut self, msg: StoredMessage, room: &RoomName, epoch: &str) {
        self.turn_keys.push((room.clone(), msg.seq));
        if !self.turn_epochs.iter().any(|(r, _)| **r == **room) {
            self.turn_epochs.push((room.to_string(), epoch.to_string()));
        }
        self.turn_appends.push(msg);
    }

    /// The (room, seq) keys of a completed append batch.
    pub(super) fn take_batch(&mut self, batch: u64) -> Option<Vec<(RoomName, Seq)>> {
        self.batches.remove(&batch)
    }

    pub(super) fn take_op(&mut self, op: u64) -> Option<StoreOp> {
        self.ops.remove(&op)
    }

    /// Starts a range read; the answer comes back as `StoreDone::Ranged`.
    pub(super) fn start_range(&mut self, port: &ChatPort, room: &str, q: RangeQuery, op: StoreOp) {
        let op_id = self.next_op;
        let tx = self.done_tx.clone();
        let waker = port.waker();
        if let Some(broker) = &self.broker {
            self.next_op += 1;
            self.ops.insert(op_id, op);
            let name = room.to_string();
            broker.range(
                room,
                q,
                Box::new(move |result| {
                    let result = result
                        .map(|page| {
                            let msgs = page
                                .entries
                                .iter()
                                .filter_map(|e| super::cluster::stored_of_entry(&name, e))
                                .collect();
                            (msgs, page.has_more)
                        })
                        .map_err(|e| StoreError::Unavailable(e.to_string()));
                    if tx.send(StoreDone::Ranged { op: op_id, result }).is_ok() {
                        let _ = waker.wake();
                    }
                }),
            );
            return;
        }
        let Some(store) = &self.handle else {
            return;
        };
        self.next_op += 1;
        self.ops.insert(op_id, op);
        store.range(
            room.to_string(),
            q,
            Box::new(move |result| {
                if tx.send(StoreDone::Ranged { op: op_id, result }).is_ok() {
                    let _ = waker.wake();
                }
            }),
        );
    }

    /// Hands this turn's appends to the store as one request.
    fn submit_turn(&mut self, port: &ChatPort) {
        if self.turn_appends.is_empty() {
            return;
        }
        let Some(store) = &self.handle else {
            return;
        };
        let batch = self.next_op;
        self.next_op += 1;
        let msgs = std::mem::take(&mut self.turn_appends);
        let epochs = std::mem::take(&mut self.turn_epochs);
        self.batches
            .insert(batch, std::mem::take(&mut self.turn_keys));
        let tx = self.done_tx.clone();
        let waker = port.waker();
        store.append(
            msgs,
            epochs,
            Box::new(move |results| {
                if tx.send(StoreDone::Appended { batch, results }).is_ok() {
                    let _ = waker.wake();
                }
            }),
        );
    }

    fn try_done(&self) -> Option<StoreDone> {
        self.done_rx.try_recv().ok()
    }

    /// Fire-and-forget: the user home decided the `rooms` list changed.
    pub(super) fn set_listed(&self, user: &str, room: &str, listed: bool) {
        if let Some(broker) = &self.broker {
            broker.set_listed(user, room, listed);
        }
        if let Some(store) = &self.handle {
            store.set_listed(user.to_string(), room.to_string(), listed);
        }
    }

    /// Fire-and-forget: a read marker moved forward.
    pub(super) fn set_read(&self, user: &str, room: &str, seq: Seq) {
        if let Some(store) = &self.handle {
            store.set_read(user.to_string(), room.to_string(), seq);
        }
    }
}

impl ChatApp {
    /// End of a loop turn: take the store's answers, then submit this turn's
    /// appends as one request (a rejection, queue full, answers at once).
    pub(super) fn store_turn(&mut self, port: &mut ChatPort) {
        self.take_store_answers(port);
        self.store.submit_turn(port);
        self.take_store_answers(port);
    }

    fn take_store_answers(&mut self, port: &mut ChatPort) {
        while let Some(done) = self.store.try_done() {
            match done {
                StoreDone::Appended { batch, results } => self.on_appended(port, batch, results),
                StoreDone::Ranged { op, result } => self.on_ranged(port, op, result),
            }
        }
    }
}
