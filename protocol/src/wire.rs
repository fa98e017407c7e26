//! Wire messages of Hestia's two request-response protocols and of presence.
//!
//! - `/hestia/fed/1`, node to node: [`FedRequest`] / [`FedResponse`].
//! - `/hestia/client/1`, a user's device to its home node: [`ClientRequest`] / [`ClientResponse`].
//! - gossipsub topic [`PRESENCE_TOPIC`]: [`Presence`] announcements (signed by gossipsub with the
//!   node key; they name no user).
//!
//! Each frame on a stream is a 4-byte big-endian length and that many bytes of
//! [`crate::codec`] encoding, at most [`crate::codec::MAX_FRAME_BYTES`].

use crate::Millis;
use crate::envelope::{Envelope, EnvelopeId};
use crate::file::{BlobId, Capability};
use crate::identity::{IdentityKey, Sig, UserId};
use crate::push::{EndpointRefusal, Subscription};
use crate::session::prekeys::{PrekeyBundle, SignedPrekey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FED_PROTOCOL: &str = "/hestia/fed/1";
pub const CLIENT_PROTOCOL: &str = "/hestia/client/1";
pub const PRESENCE_TOPIC: &str = "hestia/presence/1";
pub const PROTOCOL_VERSION: u32 = 1;

/// Most envelopes in one request (a federation batch, a client send, a fetch). With the largest
/// bucket this stays under [`crate::codec::MAX_FRAME_BYTES`] only for small bodies; the sender
/// also bounds a batch by bytes ([`MAX_BATCH_BYTES`]).
pub const MAX_BATCH_ENVELOPES: usize = 256;
/// Most body bytes in one batch, leaving room for framing inside the frame limit.
pub const MAX_BATCH_BYTES: usize = crate::codec::MAX_FRAME_BYTES - 64 * 1024;
/// How far a client's request timestamp may be from the node's clock.
pub const MAX_AUTH_SKEW_MS: Millis = 5 * 60 * 1000;
/// The longest a node holds a fetch open waiting for mail (long poll).
pub const MAX_FETCH_WAIT_MS: u32 = 30_000;
/// Most addresses in a presence announcement.
pub const MAX_PRESENCE_ADDRS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FedRequest {
    /// Store these envelopes for local users. The answer lists one result per envelope, in order.
    Deliver(Vec<Envelope>),
    /// A prekey bundle of this local user, for a session one of the asking node's users starts.
    /// Hands out (and deletes) one one-time prekey.
    FetchBundle(UserId),
    /// One chunk of a complete blob held here, for one of the asking node's users (which one is
    /// not said).
    BlobGet {
        blob: BlobId,
        index: u32,
        cap: Capability,
    },
    /// The asking node's user has the whole file: delete the blob.
    BlobDone { blob: BlobId, cap: Capability },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FedResponse {
    /// One result per delivered envelope, in request order. Sent only after the accepted ones are
    /// durable on the receiving node.
    Delivered(Vec<DeliverResult>),
    /// The whole request was refused; nothing was stored.
    Refused(Refusal),
    /// The answer to `FetchBundle`: none if no such user or no prekeys published.
    Bundle(Option<Box<PrekeyBundle>>),
    /// Answer to `BlobGet`.
    Chunk(#[serde(with = "crate::codec::bytes")] Vec<u8>),
    /// Answer to `BlobDone`.
    BlobDeleted,
    /// A `BlobGet` or `BlobDone` that names no blob here the capability opens (or one not yet
    /// complete, or expired).
    NoSuchBlob,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliverResult {
    Accepted,
    /// Already held or already delivered; treat as accepted.
    Duplicate,
    NoSuchUser,
    Expired,
    MailboxFull,
    /// Header failed the relay's checks (version, size, expiry).
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    TooManyEnvelopes,
    Overloaded,
    Unauthenticated,
    Malformed,
    /// The sending node delivered faster than this node allows a peer; try again later.
    RateLimited {
        retry_after_ms: u32,
    },
    /// This node's operator does not federate with the sending node.
    Denied,
}

/// A request from a user's device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    pub auth: Auth,
    pub op: ClientOp,
}

/// How a request shows which user sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auth {
    /// Proof that the user holds the identity key, bound to this node, this connection's peer id,
    /// a fresh timestamp and the operation. A node that verifies it opens a session: the
    /// connection's (Noise-authenticated) peer id stands for the user until it disconnects.
    Signed(Box<ClientAuth>),
    /// The user of the session this connection opened with a `Signed` request. Saves a signature
    /// and a verification per request; refused with `SessionUnknown` if there is no such session.
    Session(UserId),
}

impl Auth {
    pub fn user(&self) -> UserId {
        match self {
            Auth::Signed(a) => a.user,
            Auth::Session(u) => *u,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAuth {
    pub user: UserId,
    pub timestamp: Millis,
    pub signature: Sig,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    /// Create an account for `auth.user` on this node (idempotent).
    Register,
    /// Relay these envelopes. `to_node` is the recipient's home node peer id.
    Send(Vec<Outgoing>),
    /// Return up to `limit` held envelopes; if none, wait up to `wait_ms` for one to arrive.
    Fetch { limit: u32, wait_ms: u32 },
    /// The device has stored these; the node deletes them.
    Ack(Vec<EnvelopeId>),
    /// Delivery state of envelopes this user sent.
    Status(Vec<EnvelopeId>),
    /// Publish this user's signed prekey (replacing the previous one) and add one-time prekeys.
    /// The node checks the signature and keeps at most `MAX_ONE_TIME_PREKEYS`.
    PublishPrekeys {
        signed: Box<SignedPrekey>,
        one_time: Vec<[u8; 32]>,
    },
    /// How many one-time prekeys the node still holds for this user.
    PrekeyStatus,
    /// A prekey bundle of `user`, whose home node is `node` (this node or another; the home
    /// node fetches it across the federation).
    FetchBundle { user: UserId, node: String },
    /// Start an upload of an encrypted file's chunks (`crate::file`), or find out how far one
    /// got: the same blob and spec again is a resume. Refused before any chunk is sent if the
    /// blob is larger than the node allows or past the user's storage quota.
    BlobBegin { blob: BlobId, spec: BlobSpec },
    /// One sealed chunk of an upload this user began. When the last missing chunk is stored
    /// the blob is complete and can be fetched.
    BlobPut {
        blob: BlobId,
        index: u32,
        #[serde(with = "crate::codec::bytes")]
        chunk: Vec<u8>,
    },
    /// The state of an upload this user began.
    BlobStatus(BlobId),
    /// One chunk of a complete blob held by `node` (this node, or another: the home node fetches
    /// it on the device's behalf, so the holding node never learns which device asked).
    BlobGet {
        node: String,
        blob: BlobId,
        index: u32,
        cap: Capability,
    },
    /// The device has the whole file: the holding node deletes the blob's chunks.
    BlobDone {
        node: String,
        blob: BlobId,
        cap: Capability,
    },
    /// Wake this user's devices through this Web Push subscription when mail waits and none
    /// is connected (`crate::push`). The same endpoint again replaces its keys.
    PushRegister(Subscription),
    /// Stop pushing to this endpoint, or to every endpoint of this user (`None`).
    PushUnregister { endpoint: Option<String> },
    /// The node's VAPID key and this user's subscriptions.
    PushStatus,
    /// Short-lived credentials for this node's call relay (`crate::turn`), asked for just
    /// before a call.
    TurnCredentials,
    /// `Register` with an invite token from the node's operator (a node that registers by
    /// invite only refuses a plain `Register`). At most [`MAX_INVITE_TOKEN_LEN`] bytes.
    RegisterWithInvite(String),
}

/// Longest invite token a node reads.
pub const MAX_INVITE_TOKEN_LEN: usize = 128;

/// What a node needs to hold an upload: its shape, who may fetch it, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobSpec {
    /// Chunks in the blob. Every chunk but the last is `crate::file::CHUNK_BYTES` plus its tag.
    pub chunks: u32,
    /// Sealed bytes of the last chunk.
    pub last_chunk_bytes: u32,
    /// SHA-256 of the capability that fetches it (`crate::file::cap_hash`).
    pub cap_hash: [u8; 32],
    pub expires_at: Millis,
}

impl BlobSpec {
    /// Sealed bytes of chunk `index` (none past the end).
    pub fn chunk_len(&self, index: u32) -> Option<u32> {
        let full = crate::file::SEALED_CHUNK_BYTES;
        match index.checked_add(1)?.cmp(&self.chunks) {
            std::cmp::Ordering::Less => Some(full),
            std::cmp::Ordering::Equal => Some(self.last_chunk_bytes),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Sealed bytes of the whole blob.
    pub fn total_bytes(&self) -> u64 {
        let full = u64::from(crate::file::SEALED_CHUNK_BYTES);
        u64::from(self.chunks.saturating_sub(1)) * full + u64::from(self.last_chunk_bytes)
    }

    /// The spec of a file of `size` bytes sealed as `crate::file` does.
    pub fn of_file(size: u64, cap_hash: [u8; 32], expires_at: Millis) -> BlobSpec {
        let chunks = crate::file::chunk_count(size) as u32;
        let last = crate::file::chunk_plain_len(size, chunks - 1) as u32;
        BlobSpec {
            chunks,
            last_chunk_bytes: last + crate::file::TAG_BYTES as u32,
            cap_hash,
            expires_at,
        }
    }
}

/// Where an upload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobPhase {
    Uploading,
    /// Every chunk is stored; the blob can be fetched.
    Complete,
    /// The recipient's device fetched it and its chunks are deleted.
    Fetched,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobState {
    pub phase: BlobPhase,
    pub chunks: u32,
    /// Chunks held: bit `i % 8` of byte `i / 8` is chunk `i`.
    pub held: Vec<u8>,
    pub expires_at: Millis,
}

impl BlobState {
    pub fn is_held(&self, index: u32) -> bool {
        self.held
            .get(index as usize / 8)
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    pub fn held_count(&self) -> u32 {
        self.held.iter().map(|b| b.count_ones()).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub to_node: String,
    pub envelope: Envelope,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    Registered,
    /// One result per envelope, in request order, sent after the accepted ones are durable.
    Sent(Vec<SendResult>),
    Envelopes(Vec<Envelope>),
    Acked {
        removed: u32,
    },
    Status(Vec<DeliveryState>),
    /// Answer to `PublishPrekeys` and `PrekeyStatus`: one-time prekeys held, and whether that
    /// is below `ONE_TIME_PREKEY_LOW` (the device should publish more).
    Prekeys {
        one_time: u32,
        low: bool,
    },
    Bundle(Box<PrekeyBundle>),
    Error(ClientError),
    /// Answer to `BlobBegin` and `BlobStatus`.
    Blob(BlobState),
    /// Answer to `BlobPut`, once the chunk is durable: chunks held now.
    ChunkStored {
        held: u32,
    },
    /// Answer to `BlobGet`: the sealed chunk.
    Chunk(#[serde(with = "crate::codec::bytes")] Vec<u8>),
    /// Answer to `BlobDone`.
    BlobDeleted,
    /// Answer to the push requests.
    Push(PushInfo),
    /// Answer to `TurnCredentials`.
    Turn(TurnGrant),
}

/// Where this node's call relay listens and the credentials that open an allocation on it
/// until `expires_at` (`crate::turn`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnGrant {
    /// The relay's UDP address, `ip:port`.
    pub server: String,
    pub username: String,
    pub password: String,
    pub expires_at: Millis,
}

impl std::fmt::Debug for TurnGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnGrant")
            .field("server", &self.server)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What a node tells a user about push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushInfo {
    /// The node's VAPID public key (P-256, uncompressed): the `applicationServerKey` a
    /// subscription for this node is made with.
    #[serde(with = "crate::codec::bytes")]
    pub vapid_key: Vec<u8>,
    pub subscriptions: Vec<PushSubscriptionState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubscriptionState {
    pub endpoint: String,
    pub registered_at: Millis,
    pub state: PushState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushState {
    /// In use. The counts are since the node last started.
    Active {
        /// A wake-up went out and the device has not since connected and drained its mailbox:
        /// no further wake-up until it has.
        woken: bool,
        wakes_sent: u32,
        last_wake_at: Option<Millis>,
        /// Failed attempts of the current (or last) wake-up, and why the last one failed.
        failed_attempts: u32,
        last_failure: Option<WakeFailure>,
    },
    /// The push service said the subscription is gone (HTTP 404 or 410); nothing is sent to it
    /// any more. Registering it again (or a new one) replaces this.
    Removed { at: Millis, status: u16 },
}

/// Why one wake-up attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WakeFailure {
    /// The push service answered with this HTTP status.
    Status(u16),
    /// No connection (refused, reset, TLS failure, DNS failure).
    Unreachable,
    /// No answer in time.
    Timeout,
    /// The endpoint now resolves only to addresses the node does not send to.
    Refused(EndpointRefusal),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendResult {
    /// Durably queued for the recipient's node.
    Queued,
    /// The recipient is on this node; stored in their mailbox.
    DeliveredToNode,
    NoSuchUser,
    Invalid,
    /// This node holds too much for that destination; try later.
    Full,
    /// This node's operator does not federate with the recipient's node.
    Denied,
    /// The body is larger than this node takes.
    TooLarge {
        max_bytes: u32,
    },
    /// The envelope would be held longer than this node holds mail.
    TtlTooLong {
        max_secs: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// In the sender's node's outbox; `attempts` tries so far.
    Queued {
        attempts: u32,
    },
    DeliveredToNode {
        at: Millis,
    },
    NoSuchUser,
    Expired,
    /// The recipient's node refused the envelope's header (version, size or expiry).
    Refused,
    /// This node knows nothing of that envelope (never sent here, or its record aged out).
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientError {
    NotRegistered,
    BadAuth,
    StaleTimestamp,
    TooMany,
    RegistrationClosed,
    Overloaded,
    /// A `Session` request on a connection with no session for that user: sign the request.
    SessionUnknown,
    /// No such user on that node, or they have published no prekeys.
    NoBundle,
    /// The other node did not answer in time.
    NodeUnreachable,
    /// The published prekeys are refused (bad signature, or too many).
    BadPrekeys,
    /// This user sent (or fetched bundles) faster than the node allows; nothing was done.
    /// Try again after `retry_after_ms`.
    RateLimited {
        retry_after_ms: u32,
    },
    /// No such blob here, or not this user's, or the capability does not open it (which of
    /// these is not said), or it expired.
    NoSuchBlob,
    /// The blob is larger than this node accepts (`max` sealed bytes).
    BlobTooLarge {
        max: u64,
    },
    /// The upload would take the user past their storage quota, or past the uploads one user
    /// may have going at once.
    BlobQuota,
    /// A chunk that does not fit the blob's spec (index or length), or a different spec for a
    /// blob already begun, or a fetch of a blob not yet complete.
    BadBlob,
    /// The push subscription is refused, and why.
    PushRefused(EndpointRefusal),
    /// The user already holds `crate::push::MAX_SUBSCRIPTIONS_PER_USER` subscriptions.
    TooManySubscriptions,
    /// This node sends no push wake-ups.
    PushDisabled,
    /// This node runs no call relay.
    CallsDisabled,
    /// The node's operator suspended this account: it can neither send nor fetch.
    Suspended,
    /// This node registers new accounts by invite only.
    InviteRequired,
    /// No such invite (mistyped, or revoked).
    InviteInvalid,
    InviteExpired,
    /// The invite has made all the registrations it was made for.
    InviteUsedUp,
    /// The operator of this node, or of the other, does not federate between them.
    NodeDenied,
}

/// A node's signed presence announcement (gossipsub signs it with the node key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub protocol_version: u32,
    pub at: Millis,
}

/// Oldest presence announcement a node acts on. Nodes announce every 20 s, so ten minutes is
/// many announcements of slack; an older one is a replay (gossipsub signatures carry no time)
/// and could point peers at addresses a node has left.
pub const PRESENCE_MAX_AGE_MS: Millis = 10 * 60 * 1000;

impl Presence {
    /// Whether to act on this announcement at `now`: not older than [`PRESENCE_MAX_AGE_MS`],
    /// not further ahead than [`MAX_AUTH_SKEW_MS`], and newer than `last`, the time of the last
    /// announcement acted on from the same node.
    pub fn is_fresh(&self, now: Millis, last: Option<Millis>) -> bool {
        now.saturating_sub(self.at) <= PRESENCE_MAX_AGE_MS
            && self.at <= now.saturating_add(MAX_AUTH_SKEW_MS)
            && last.is_none_or(|l| self.at > l)
    }
}

/// The gossipsub message id: a hash of the source, sequence number and data. Collision
/// resistant (SHA-256), so no one can craft a message whose id shadows another's and makes
/// peers drop the real one as a duplicate (a 64-bit fixed-key hash allowed that).
pub fn gossip_message_id(source: Option<&[u8]>, sequence: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"hestia/gossip-id/v1");
    match source {
        Some(s) => {
            h.update([1]);
            h.update((s.len() as u32).to_be_bytes());
            h.update(s);
        }
        None => h.update([0]),
    }
    match sequence {
        Some(n) => {
            h.update([1]);
            h.update(n.to_be_bytes());
        }
        None => h.update([0]),
    }
    h.update(data);
    h.finalize()[..20].to_vec()
}

impl ClientAuth {
    fn signed_bytes(
        node: &str,
        client_peer: &str,
        timestamp: Millis,
        op: &ClientOp,
    ) -> Result<Vec<u8>, crate::codec::CodecError> {
        let mut h = Sha256::new();
        h.update(crate::codec::encode(op)?);
        let mut m = b"hestia/client-auth/v1".to_vec();
        for part in [node.as_bytes(), client_peer.as_bytes()] {
            m.extend_from_slice(&(part.len() as u32).to_be_bytes());
            m.extend_from_slice(part);
        }
        m.extend_from_slice(&timestamp.to_be_bytes());
        m.extend_from_slice(&h.finalize());
        Ok(m)
    }

    pub fn sign(
        key: &IdentityKey,
        node: &str,
        client_peer: &str,
        now: Millis,
        op: &ClientOp,
    ) -> Result<ClientAuth, crate::codec::CodecError> {
        let m = Self::signed_bytes(node, client_peer, now, op)?;
        Ok(ClientAuth {
            user: key.user_id(),
            timestamp: now,
            signature: key.sign(&m),
        })
    }

    /// Checks the signature for this node and the connection's peer id, and freshness.
    pub fn verify(
        &self,
        node: &str,
        client_peer: &str,
        now: Millis,
        op: &ClientOp,
    ) -> Result<(), ClientError> {
        if self.timestamp.abs_diff(now) > MAX_AUTH_SKEW_MS {
            return Err(ClientError::StaleTimestamp);
        }
        let m = Self::signed_bytes(node, client_peer, self.timestamp, op)
            .map_err(|_| ClientError::BadAuth)?;
        self.user
            .verify(&m, &self.signature)
            .map_err(|_| ClientError::BadAuth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_binds_node_peer_time_and_op() {
        let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(5);
        let k = IdentityKey::generate(&mut rng);
        let op = ClientOp::Fetch {
            limit: 10,
            wait_ms: 0,
        };
        let a = ClientAuth::sign(&k, "node", "peer", 1_000_000, &op).unwrap();
        assert_eq!(a.verify("node", "peer", 1_000_000, &op), Ok(()));
        assert_eq!(
            a.verify("other", "peer", 1_000_000, &op),
            Err(ClientError::BadAuth)
        );
        assert_eq!(
            a.verify("node", "peer2", 1_000_000, &op),
            Err(ClientError::BadAuth)
        );
        let op2 = ClientOp::Fetch {
            limit: 11,
            wait_ms: 0,
        };
        assert_eq!(
            a.verify("node", "peer", 1_000_000, &op2),
            Err(ClientError::BadAuth)
        );
        assert_eq!(
            a.verify("node", "peer", 1_000_000 + MAX_AUTH_SKEW_MS + 1, &op),
            Err(ClientError::StaleTimestamp)
        );
    }

    #[test]
    fn presence_is_acted_on_only_when_fresh_and_newer() {
        let p = Presence {
            peer_id: "12D3KooW".into(),
            addrs: vec![],
            protocol_version: PROTOCOL_VERSION,
            at: 1_000_000_000,
        };
        let now = p.at + 1000;
        assert!(p.is_fresh(now, None));
        assert!(p.is_fresh(now, Some(p.at - 1)));
        assert!(!p.is_fresh(now, Some(p.at)), "a replay of the last one");
        assert!(!p.is_fresh(p.at + PRESENCE_MAX_AGE_MS + 1, None), "too old");
        assert!(
            !p.is_fresh(p.at - MAX_AUTH_SKEW_MS - 1, None),
            "from the future"
        );
    }

    #[test]
    fn gossip_ids_separate_their_fields() {
        let a = gossip_message_id(Some(b"ab"), Some(1), b"c");
        assert_ne!(a, gossip_message_id(Some(b"a"), Some(1), b"bc"));
        assert_ne!(a, gossip_message_id(Some(b"ab"), Some(2), b"c"));
        assert_ne!(a, gossip_message_id(None, Some(1), b"c"));
        assert_eq!(a, gossip_message_id(Some(b"ab"), Some(1), b"c"));
    }
}
