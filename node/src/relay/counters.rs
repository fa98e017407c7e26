//! What the core counts for the operator's metrics (`/metrics`, docs/operating.md): plain
//! totals since start, read by the driver when it is scraped.

use std::collections::BTreeMap;

/// Totals since the core started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Envelopes accepted from this node's devices (queued for another node, or stored here).
    pub received_from_devices: u64,
    /// Envelopes accepted from other nodes into local mailboxes.
    pub received_from_nodes: u64,
    /// Envelopes another node accepted from this node's outboxes.
    pub relayed: u64,
    /// Envelopes a local device acknowledged (and the node deleted).
    pub delivered: u64,
    /// Envelopes dropped unfetched at their expiry, in mailboxes and in outboxes.
    pub expired_mailbox: u64,
    pub expired_outbox: u64,
    /// Envelopes (or requests) refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// Outbound federation requests that failed, by why.
    pub federation_failures: BTreeMap<&'static str, u64>,
}

impl Counters {
    pub(super) fn refuse(&mut self, reason: &'static str, n: u64) {
        *self.refused.entry(reason).or_default() += n;
    }

    pub(super) fn fed_failed(&mut self, why: &'static str) {
        *self.federation_failures.entry(why).or_default() += 1;
    }
}
