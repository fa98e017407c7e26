//! What a node allows: per local user sending, per remote node delivering, the bytes one
//! remote node may keep stored here, files and mailboxes; and the token bucket that meters the
//! rates.

use super::origins::MAX_STORED_BYTES_PER_NODE;
use super::{
    BLOB_QUOTA_PER_USER, MAX_BLOB_BYTES, MAX_BLOB_STORED_BYTES, MAX_MAILBOX_BYTES,
    MAX_MAILBOX_ENVELOPES, MAX_STORED_BYTES,
};
use hestia_protocol::Millis;

/// Envelopes (and bundle fetches) one local user may send in a burst, by default. The home node
/// knows who sends (it authenticated them), so it can stop a user flooding the federation:
/// generous for people, a wall for a runaway script. Operators set their own with
/// [`SendLimit`].
pub const SEND_BURST: u64 = 10_000;
/// Sustained sends per second per local user once the burst is spent, by default.
pub const SENDS_PER_SECOND: u64 = 100;

/// The per-user send allowance: a token bucket of `burst` refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendLimit {
    pub burst: u64,
    pub per_second: u64,
}

impl Default for SendLimit {
    fn default() -> Self {
        SendLimit {
            burst: SEND_BURST,
            per_second: SENDS_PER_SECOND,
        }
    }
}

impl SendLimit {
    /// No limit (benchmarks measuring the relay itself, simulations).
    pub const UNLIMITED: SendLimit = SendLimit {
        burst: u64::MAX / 2000,
        per_second: u64::MAX / 2000,
    };
}

/// Envelopes another node may deliver here in a burst, and per second after it. A peer node is
/// only a key pair, so without this any node on the internet could fill mailboxes as fast as
/// the disk takes it; a community node sending to another sends far less.
pub const FED_LIMIT: SendLimit = SendLimit {
    burst: 20_000,
    per_second: 1_000,
};

/// The limits a node applies: per local user sending, per remote node delivering, and the
/// bytes one remote node may keep stored here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub send: SendLimit,
    pub fed: SendLimit,
    pub stored_per_node: u64,
    /// Largest blob (sealed file bytes) a local user may upload.
    pub max_blob_bytes: u64,
    /// Sealed file bytes one local user may have stored at once.
    pub blob_quota: u64,
    /// Sealed file bytes all local users together may have stored at once.
    pub blob_total: u64,
    /// Envelopes and body bytes one local user's mailbox may hold.
    pub mailbox_envelopes: usize,
    pub mailbox_bytes: u64,
    /// Largest envelope body taken, from local users and from other nodes.
    pub max_envelope_bytes: usize,
    /// Longest an envelope may be held: one that expires later is refused.
    pub max_ttl_ms: Millis,
}

/// The rates metered, and one remote node's share of the stored mail; the storage bounds are
/// [`Limits::UNLIMITED`]'s.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            send: SendLimit::default(),
            fed: FED_LIMIT,
            stored_per_node: MAX_STORED_BYTES_PER_NODE,
            ..Limits::UNLIMITED
        }
    }
}

impl Limits {
    /// No rate limits (benchmarks measuring the relay itself, simulations); the storage
    /// bounds stay.
    pub const UNLIMITED: Limits = Limits {
        send: SendLimit::UNLIMITED,
        fed: SendLimit::UNLIMITED,
        stored_per_node: MAX_STORED_BYTES,
        max_blob_bytes: MAX_BLOB_BYTES,
        blob_quota: BLOB_QUOTA_PER_USER,
        blob_total: MAX_BLOB_STORED_BYTES,
        mailbox_envelopes: MAX_MAILBOX_ENVELOPES,
        mailbox_bytes: MAX_MAILBOX_BYTES,
        max_envelope_bytes: hestia_protocol::envelope::MAX_BODY_BYTES,
        max_ttl_ms: hestia_protocol::envelope::MAX_TTL_MS,
    };
}

/// A token bucket: what is left (in thousandths) and when it was last counted.
#[derive(Clone, Copy)]
pub(super) struct Bucket {
    left_milli: u64,
    at: Millis,
}

impl Bucket {
    /// Takes `n` from the allowance `limit` at `now`, or says in how many ms there is enough.
    pub(super) fn take(
        this: Option<Bucket>,
        limit: SendLimit,
        n: u64,
        now: Millis,
    ) -> Result<Bucket, u64> {
        const MILLI: u64 = 1000;
        let per_second = limit.per_second.max(1);
        let full = limit.burst.saturating_mul(MILLI);
        let Bucket { left_milli, at } = this.unwrap_or(Bucket {
            left_milli: full,
            at: now,
        });
        // Allowance accrues at `per_second` per 1000 ms, i.e. `per_second` thousandths per ms.
        let refilled = left_milli
            .saturating_add(now.saturating_sub(at).saturating_mul(per_second))
            .min(full);
        let need = n.saturating_mul(MILLI);
        if need > refilled {
            return Err((need - refilled).div_ceil(per_second));
        }
        Ok(Bucket {
            left_milli: refilled - need,
            at: now,
        })
    }
}

/// Remote nodes whose delivery allowance is tracked at once; when full, all are forgotten (and
/// start again with a full burst), so the table cannot grow with the number of peer ids.
pub const MAX_FED_BUCKETS: usize = 10_000;
