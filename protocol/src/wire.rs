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
use crate::identity::{IdentityKey, Sig, UserId};
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
