//! The outbox: envelopes waiting for other nodes, per destination, sent in bounded batches with
//! backoff, and finished with the state the destination reported.

use super::*;

impl Core {
    pub(super) fn insert_outbox(&mut self, e: OutboxEntry, attempts: u32) {
        let id = e.id;
        self.expiries.insert((e.expires_at, Expiry::Outbox(id)));
        self.queued.insert(id, e.to_node.clone());
        let o = self.outboxes.entry(e.to_node).or_default();
        o.queue.push_back(id);
        o.records.insert(
            id,
            OutRef {
                owner: e.owner,
                expires_at: e.expires_at,
                size: e.size,
                attempts,
            },
        );
    }

    pub(super) fn finish_outbox(&mut self, node: &str, id: &EnvelopeId, state: DeliveryState) {
        let Some(o) = self.outboxes.get_mut(node) else {
            return;
        };
        let Some(rec) = o.records.remove(id) else {
            return;
        };
        // Its id may still be in `queue` (expired before it left); `flush_one` skips ids with no
        // record, so it is not searched for here (that would be linear per envelope).
        if o.records.is_empty() && o.in_flight == 0 {
            self.outboxes.remove(node);
        }
        self.expiries.remove(&(rec.expires_at, Expiry::Outbox(*id)));
        self.queued.remove(id);
        self.writes
            .push(NodeWrite::DeleteOutbox(node.to_string(), *id));
        let expires_at = rec.expires_at;
        self.set_status(
            *id,
            StatusRecord {
                owner: rec.owner,
                state,
                expires_at,
            },
        );
    }

    pub(super) fn flush_outboxes(&mut self, now: Millis) {
        let ready: Vec<String> = self
            .outboxes
            .iter()
            .filter(|(_, o)| {
                o.in_flight < MAX_IN_FLIGHT_PER_NODE && !o.queue.is_empty() && o.next_attempt <= now
            })
            .map(|(n, _)| n.clone())
            .collect();
        for node in ready {
            self.flush_outbox(&node, now);
        }
    }

    /// Sends batches to `node` while fewer than [`MAX_IN_FLIGHT_PER_NODE`] are in flight and its
    /// backoff has passed. While the window is full, new envelopes gather and leave together.
    pub(super) fn flush_outbox(&mut self, node: &str, now: Millis) {
        while self.flush_one(node, now) {}
    }

    pub(super) fn flush_one(&mut self, node: &str, now: Millis) -> bool {
        if self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES {
            return false;
        }
        let Some(o) = self.outboxes.get_mut(node) else {
            return false;
        };
        if o.in_flight >= MAX_IN_FLIGHT_PER_NODE || o.next_attempt > now {
            return false;
        }
        let mut ids = Vec::new();
        let mut bytes = 0usize;
        while let Some(id) = o.queue.front().copied() {
            let Some(rec) = o.records.get(&id) else {
                o.queue.pop_front();
                continue;
            };
            let size = rec.size as usize;
            if ids.len() >= MAX_BATCH_ENVELOPES || bytes.saturating_add(size) > MAX_BATCH_BYTES {
                break;
            }
            o.queue.pop_front();
            if rec.expires_at <= now {
                continue; // the expiry timer removes it and records the state
            }
            bytes += size;
            ids.push(id);
        }
        if ids.is_empty() {
            return false;
        }
        o.in_flight += 1;
        self.in_flight_bytes += bytes;
        let batch = self.new_batch_id();
        self.in_flight
            .insert(batch, (node.to_string(), ids.clone(), bytes));
        self.outputs.push_back(Output::FedDeliver {
            batch,
            to_node: node.to_string(),
            ids,
        });
        true
    }
}
