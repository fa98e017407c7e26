//! When delivery receipts leave the device. Pure: takes `now` and a random number generator.
//!
//! A receipt is an ordinary sealed envelope from the recipient back to the sender, so nodes
//! cannot tell it from a message, but its *timing* tells: a receipt that leaves right after the
//! recipient acknowledged a message lets the recipient's node pair "this envelope arrived for
//! Bob" with "Bob just sent one to that node", which names the sender of every message. So
//! receipts wait a random delay, and every receipt owed to one contact meanwhile joins the same
//! batch: one envelope answers many messages, at a time unrelated to any one of them. What is
//! left (a receipt still follows mail by up to the delay) is written in docs/threat-model.md.
//! The user may turn receipts off altogether.

use hestia_protocol::Millis;
use hestia_protocol::envelope::EnvelopeId;
use hestia_store::client::PendingReceipts;
use rand::{Rng, RngExt};

/// Default longest delay before a receipt leaves. A minute hides the pairing among the other
/// traffic of a busy node, and is short enough that "delivered to their device" still means
/// something to the sender.
pub const DEFAULT_MAX_DELAY_MS: Millis = 60_000;
/// Longest delay a user may set: beyond an hour a receipt says little.
pub const MAX_MAX_DELAY_MS: Millis = 3_600_000;
/// Receipt ids kept waiting for one contact. Beyond this the oldest are dropped: a receipt is
/// a courtesy, and a stranger sending many messages must not grow the device's state.
pub const MAX_PENDING_IDS: usize = 1024;

/// The user's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub enabled: bool,
    /// A batch leaves uniformly at random between half of this and this after its first id.
    pub max_delay_ms: Millis,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            max_delay_ms: DEFAULT_MAX_DELAY_MS,
        }
    }
}

impl Policy {
    /// Stored form: `enabled (1) ‖ max delay (8, BE)`.
    pub fn to_bytes(self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = self.enabled as u8;
        b[1..].copy_from_slice(&self.max_delay_ms.to_be_bytes());
        b
    }

    /// The default for anything unreadable: receipts on.
    pub fn from_bytes(b: &[u8]) -> Policy {
        match b {
            [e, rest @ ..] if rest.len() == 8 => Policy {
                enabled: *e != 0,
                max_delay_ms: u64::from_be_bytes(rest.try_into().expect("8 bytes"))
                    .min(MAX_MAX_DELAY_MS),
            },
            _ => Policy::default(),
        }
    }
}

/// Adds `ids` to what is owed to a contact whose home node is `node`. A new batch is due at a
/// random time in `[now + max/2, now + max]`; ids added before then join it without moving it.
/// Returns `None` when receipts are off (nothing is kept).
pub fn owe(
    pending: Option<PendingReceipts>,
    node: &str,
    ids: &[EnvelopeId],
    policy: Policy,
    now: Millis,
    rng: &mut impl Rng,
) -> Option<PendingReceipts> {
    if !policy.enabled {
        return None;
    }
    let mut p = pending.unwrap_or_else(|| {
        let max = policy.max_delay_ms;
        let delay = if max == 0 {
            0
        } else {
            rng.random_range(max / 2..=max)
        };
        PendingReceipts {
            node: node.to_string(),
            due_at: now.saturating_add(delay),
            ids: Vec::new(),
        }
    });
    p.node = node.to_string();
    p.ids.extend_from_slice(ids);
    let excess = p.ids.len().saturating_sub(MAX_PENDING_IDS);
    p.ids.drain(..excess);
    Some(p)
}

/// Whether a batch may leave now.
pub fn due(p: &PendingReceipts, now: Millis) -> bool {
    now >= p.due_at
}

/// The earliest time any batch is due, to bound how long a long-poll may wait.
pub fn next_due<'a>(batches: impl IntoIterator<Item = &'a PendingReceipts>) -> Option<Millis> {
    batches.into_iter().map(|p| p.due_at).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn id(n: u8) -> EnvelopeId {
        EnvelopeId([n; 16])
    }

    #[test]
    fn a_receipt_does_not_leave_within_the_delay_window() {
        let policy = Policy::default();
        for seed in 0..200 {
            let rng = &mut rand::rngs::StdRng::seed_from_u64(seed);
            let now = 1_000_000;
            let p = owe(None, "node", &[id(1)], policy, now, rng).unwrap();
            assert!(!due(&p, now));
            assert!(!due(&p, now + DEFAULT_MAX_DELAY_MS / 2 - 1), "seed {seed}");
            assert!(due(&p, now + DEFAULT_MAX_DELAY_MS), "seed {seed}");
        }
    }

    #[test]
    fn later_receipts_join_the_batch_without_moving_it() {
        let rng = &mut rand::rngs::StdRng::seed_from_u64(1);
        let p = owe(None, "n", &[id(1)], Policy::default(), 0, rng).unwrap();
        let due_at = p.due_at;
        let p = owe(
            Some(p),
            "n",
            &[id(2), id(3)],
            Policy::default(),
            20_000,
            rng,
        )
        .unwrap();
        assert_eq!(p.due_at, due_at);
        assert_eq!(p.ids, [id(1), id(2), id(3)]);
        assert_eq!(next_due([&p]), Some(due_at));
    }

    #[test]
    fn off_keeps_nothing_and_the_batch_is_bounded() {
        let rng = &mut rand::rngs::StdRng::seed_from_u64(1);
        let off = Policy {
            enabled: false,
            ..Policy::default()
        };
        assert_eq!(owe(None, "n", &[id(1)], off, 0, rng), None);
        let many: Vec<EnvelopeId> = (0..=MAX_PENDING_IDS as u16)
            .map(|i| EnvelopeId([(i % 251) as u8; 16]))
            .collect();
        let p = owe(None, "n", &many, Policy::default(), 0, rng).unwrap();
        assert_eq!(p.ids.len(), MAX_PENDING_IDS);
        assert_eq!(p.ids[0], many[1], "the oldest is dropped");
    }

    #[test]
    fn policy_round_trips_and_defaults_when_unreadable() {
        let p = Policy {
            enabled: false,
            max_delay_ms: 1500,
        };
        assert_eq!(Policy::from_bytes(&p.to_bytes()), p);
        assert_eq!(Policy::from_bytes(b"x"), Policy::default());
    }
}
