//! Every value the two databases store, and [`check`], which decodes any stored key and value
//! as a read from disk would. This module does not need RocksDB (the crate's `rocksdb` feature),
//! so the fuzz targets (fuzz/) decode the stored forms without building it, and a database check
//! (a backup's) can use the same code.

use crate::schema::*;
use crate::{Result, StoreError, decode_value};
use hestia_protocol::Millis;
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::identity::{Address, UserId};
use hestia_protocol::session::prekeys::{PrekeySecrets, SignedPrekey};
use hestia_protocol::session::ratchet::Session;
use hestia_protocol::wire::{BlobPhase, BlobSpec, DeliveryState};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// `meta` → `"vault"` in a device database whose data is encrypted (schema 8,
/// [`crate::vault`]): the data key wrapped under a passphrase, and how that key is derived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    pub version: u8,
    pub kdf: crate::vault::KdfParams,
    pub salt: [u8; 16],
    pub nonce: [u8; 24],
    /// The data key (32) and its tag (16).
    pub wrapped: Vec<u8>,
}

// The node database.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub created_at: Millis,
}

/// A local account the operator suspended (schema 9): it can neither send nor fetch until
/// unsuspended; its mail is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspensionRecord {
    pub at: Millis,
    /// The operator's note, at most [`MAX_ADMIN_NOTE_LEN`] bytes; shown to admins only.
    pub note: String,
}

/// Longest operator note on a suspension or an invite.
pub const MAX_ADMIN_NOTE_LEN: usize = 200;

/// A registration invite (schema 9), stored under the SHA-256 of its token: the token itself
/// is shown once, when made, and is not in the database (nor in its backups).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    pub created_at: Millis,
    /// `None`: does not expire.
    pub expires_at: Option<Millis>,
    /// Registrations it allows in all, and those it has made.
    pub uses: u32,
    pub used: u32,
    pub note: String,
}

/// The operator's federation policy for one node (schema 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FederationRule {
    /// Refused in both directions.
    Deny,
    /// Listed as a peer; once any node is allowed, only allowed nodes are federated with.
    Allow,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationRecord {
    pub rule: FederationRule,
    pub at: Millis,
}

/// An envelope a local user sent, waiting for the recipient's node to accept it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The local user who sent it: only they may ask for its state.
    pub owner: UserId,
    pub to_node: String,
    pub envelope: Envelope,
    pub attempts: u32,
}

/// What the node tells a sender about an envelope it relayed. Kept until the envelope's expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub owner: UserId,
    pub state: DeliveryState,
    pub expires_at: Millis,
}

/// Stored beside each mailbox body (schema 4), so a restart reads these and not the bodies.
#[derive(Serialize, Deserialize)]
pub(crate) struct MailboxMeta {
    pub(crate) expires_at: Millis,
    pub(crate) size: u32,
}

/// Stored beside each outbox body (schema 4).
#[derive(Serialize, Deserialize)]
pub(crate) struct OutboxMeta {
    pub(crate) owner: UserId,
    pub(crate) expires_at: Millis,
    pub(crate) size: u32,
}

/// An upload held on this node (schema 5): its chunks are in `blobid_index_chunk`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// The local user who uploads it: only they may add chunks or ask its state.
    pub owner: UserId,
    pub spec: BlobSpec,
    pub phase: BlobPhase,
    /// Chunks stored: bit `i % 8` of byte `i / 8` is chunk `i`.
    pub held: Vec<u8>,
    /// When a chunk last arrived (an upload left idle expires early).
    pub touched_at: Millis,
}

/// A Web Push subscription of a local user (schema 6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    pub subscription: hestia_protocol::push::Subscription,
    pub registered_at: Millis,
    /// When the push service said it is gone, and its HTTP status (404 or 410): nothing is
    /// sent to it any more; kept so the user sees why.
    pub removed: Option<(Millis, u16)>,
}

// The client database.

/// The stored identity. The seed is the user's secret key: zeroized on drop, never printed.
/// It is stored unencrypted, protected by the file permissions of the data directory.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct StoredIdentity {
    pub seed: [u8; 32],
    pub name: String,
    pub home_node: String,
    pub home_addr: String,
}

/// How far the user trusts that a contact's key is the person they think it is. A contact *is*
/// its key: nothing a message says moves a contact to another key; only the user does, after
/// comparing the safety number of the new key ([`crate::client::ClientWrite::Merge`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trust {
    /// Key pinned on first use, not compared out of band.
    Unverified,
    /// The user compared fingerprints or safety numbers.
    Verified,
}

/// How a contact came to be on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// The user added it (an address or a card).
    Added,
    /// A message request: a key no contact had wrote first, and the user has not answered,
    /// verified or accepted it. Requests are bounded apart from contacts, so strangers cannot
    /// crowd out the people the user talks to.
    Request,
    /// A request the user answered (sent to it), verified or accepted.
    Accepted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The local name the user calls this contact by.
    pub name: String,
    /// The account handle the contact goes by on their node (from their card or first letter).
    /// Self-asserted: shown, compared for name clashes, never trusted.
    pub handle: Option<String>,
    pub address: Address,
    pub trust: Trust,
    pub added_at: Millis,
    pub origin: Origin,
    /// Set when this key's first message used the name of another contact (another key): the
    /// local name of the contact it claims to be. It stays until the user accepts this key as
    /// that contact's new key (after comparing its safety number) or rejects it.
    pub claims: Option<String>,
    /// When this device last asked the contact for a new session after failing to decrypt
    /// (at most once an hour: a forged sealed envelope must not make it ask in a loop).
    pub reset_asked_at: Option<Millis>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Incoming,
    Outgoing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// Outgoing, in the home node's outbox.
    Queued,
    DeliveredToNode,
    DeliveredToDevice,
    Expired,
    NoSuchUser,
    Failed(String),
    /// Incoming, read.
    Received,
    /// Schema 2 only (incoming under a key that claimed a verified contact's name, held): no
    /// longer written; the schema 3 migration makes these `Received` from their own contact.
    HeldKeyChanged,
    /// Outgoing, a first message to a contact whose node did not answer the prekey fetch: kept
    /// on the device (only) and sent once their node answers.
    WaitingForKeys,
    /// Outgoing, sealed and kept on the device; the home node did not answer (it may or may
    /// not have it): sent again, as the same envelope, by the next command (schema 6).
    Unsent,
    /// Not a message: a call, in either direction, and how it went (schema 7). Its id is the
    /// call's.
    Call(CallOutcome),
}

/// How a call went, as its history shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallOutcome {
    /// Answered; media flowed for this long.
    Talked {
        secs: u64,
    },
    /// Nobody answered: a missed call on the callee's side, "no answer" on the caller's.
    NoAnswer,
    Declined,
    /// The callee was in another call.
    Busy,
    /// Answered, but the media never flowed or broke off (relay down, network lost).
    Failed,
}

/// A sealed envelope waiting for the home node's answer (`envelopeid_unsent`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsentEnvelope {
    pub to_node: String,
    pub envelope: Envelope,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub envelope_id: EnvelopeId,
    pub direction: Direction,
    /// The other party's key.
    pub peer: UserId,
    pub peer_node: String,
    /// The contact name at the time, for display.
    pub peer_name: String,
    pub text: String,
    pub at: Millis,
    pub expires_at: Millis,
    pub state: MessageState,
}

/// Delivery receipts owed to one contact, sent together once `due_at` passes (a random delay
/// after the first of them, so the recipient's node cannot pair a receipt with the message it
/// answers by timing alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReceipts {
    pub node: String,
    pub due_at: Millis,
    pub ids: Vec<EnvelopeId>,
}

/// A file sent or received (schema 5), under the id of the message that carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub file: hestia_protocol::file::FileRef,
    pub direction: Direction,
    pub state: FileState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileState {
    /// Outgoing: the reference went to the recipient.
    Sent,
    /// Outgoing: the recipient's device fetched it and the holding node deleted it.
    Fetched,
    /// Incoming, not downloaded.
    Received,
    /// Incoming, `done` chunks verified and written to the temporary file `part`.
    Downloading { part: String, done: u32 },
    /// Incoming, verified and in place at `path`.
    Downloaded { path: String },
    /// The holding node no longer has it (expired or deleted).
    Expired,
}

/// An upload this device has begun (schema 5): the file it reads from, as it was when the
/// upload began (a changed file starts over), and the reference it is building.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUpload {
    /// The contact it is for (local name).
    pub contact: String,
    pub path: String,
    pub modified_ms: u64,
    /// The id of the message that will announce it, fixed at the start.
    pub envelope: EnvelopeId,
    pub file: hestia_protocol::file::FileRef,
}

/// Schema 2's contact form, read once by the client's migration to schema 3.
pub mod v2 {
    use super::*;

    #[derive(Deserialize)]
    pub enum Trust {
        Unverified,
        Verified,
        Changed { new_key: UserId },
    }

    #[derive(Deserialize)]
    pub struct Contact {
        pub name: String,
        pub handle: Option<String>,
        pub address: Address,
        pub trust: Trust,
        pub added_at: Millis,
    }
}

fn corrupt(cf: &'static str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        cf,
        reason: reason.into(),
    }
}

/// A value must be the one its key names (a key and value from different entries are damage).
fn named(cf: &'static str, same: bool) -> Result<()> {
    if same {
        Ok(())
    } else {
        Err(corrupt(cf, "the value is not the one its key names"))
    }
}

fn holds(cf: &'static str, ok: bool, reason: &str) -> Result<()> {
    if ok { Ok(()) } else { Err(corrupt(cf, reason)) }
}

fn key_len(cf: &'static str, key: &[u8], len: usize) -> Result<()> {
    if key.len() == len {
        Ok(())
    } else {
        Err(corrupt(cf, "bad key length"))
    }
}

/// Decodes `key` and `value` as the current schema stores them under column family `cf` of
/// either database, as a read from disk would, and checks what a reader relies on (key
/// lengths, that a mailbox key names the envelope it holds). An unknown family is an error.
pub fn check(cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
    // The family's name as a static string, for the error.
    let cf: &'static str = NODE_CFS
        .iter()
        .chain(CLIENT_CFS)
        .find(|c| **c == cf)
        .ok_or_else(|| corrupt(META, "unknown column family"))?;
    match cf {
        META => match key {
            b"kind" | b"node_key" => Ok(()),
            b"vapid_key" | b"turn_secret" if value.len() == 32 => Ok(()),
            b"schema_version" if value.len() == 4 => Ok(()),
            b"vault" => decode_value::<VaultRecord>(cf, value).map(drop),
            _ => Err(corrupt(cf, "unknown key")),
        },
        USERID_ACCOUNT => {
            key_len(cf, key, 32)?;
            decode_value::<AccountRecord>(cf, value).map(drop)
        }
        USERID_ENVELOPEID_MAILBOX => {
            let (user, id) = decode_mailbox_key(key).ok_or_else(|| corrupt(cf, "bad key"))?;
            let e: Envelope = decode_value(cf, value)?;
            named(cf, e.recipient == user && e.id == id)
        }
        USERID_ENVELOPEID_MAILBOXMETA => {
            decode_mailbox_key(key).ok_or_else(|| corrupt(cf, "bad key"))?;
            decode_value::<MailboxMeta>(cf, value).map(drop)
        }
        NODEID_ENVELOPEID_OUTBOX => {
            let (node, id) = decode_outbox_key(key).ok_or_else(|| corrupt(cf, "bad key"))?;
            let r: OutboxRecord = decode_value(cf, value)?;
            named(cf, r.to_node == node && r.envelope.id == id)
        }
        NODEID_ENVELOPEID_OUTBOXMETA => {
            decode_outbox_key(key).ok_or_else(|| corrupt(cf, "bad key"))?;
            decode_value::<OutboxMeta>(cf, value).map(drop)
        }
        ENVELOPEID_STATUS => {
            key_len(cf, key, 16)?;
            decode_value::<StatusRecord>(cf, value).map(drop)
        }
        USERID_SIGNEDPREKEY => {
            key_len(cf, key, 32)?;
            decode_value::<SignedPrekey>(cf, value).map(drop)
        }
        USERID_ONETIMEPREKEY => key_len(cf, key, 64),
        USERID_SUSPENSION => {
            key_len(cf, key, 32)?;
            let r: SuspensionRecord = decode_value(cf, value)?;
            holds(cf, r.note.len() <= MAX_ADMIN_NOTE_LEN, "note too long")
        }
        INVITEHASH_INVITE => {
            key_len(cf, key, 32)?;
            let r: InviteRecord = decode_value(cf, value)?;
            holds(cf, r.note.len() <= MAX_ADMIN_NOTE_LEN, "note too long")?;
            holds(cf, r.used <= r.uses, "used more often than allowed")
        }
        NODEID_FEDERATION => {
            let node = std::str::from_utf8(key).map_err(|_| corrupt(cf, "bad key"))?;
            let len = node.len();
            holds(
                cf,
                len > 0 && len <= hestia_protocol::identity::MAX_NODE_ID_LEN,
                "bad node id",
            )?;
            decode_value::<FederationRecord>(cf, value).map(drop)
        }
        BLOBID_BLOB => {
            key_len(cf, key, 16)?;
            let r: BlobRecord = decode_value(cf, value)?;
            if r.held.len() != (r.spec.chunks as usize).div_ceil(8) {
                return Err(corrupt(cf, "the chunk map does not fit the chunk count"));
            }
            Ok(())
        }
        USERID_ENDPOINT_PUSH => {
            let (_, id) = decode_push_key(key).ok_or_else(|| corrupt(cf, "bad key"))?;
            let r: PushRecord = decode_value(cf, value)?;
            named(
                cf,
                hestia_protocol::push::endpoint_id(&r.subscription.endpoint) == id,
            )?;
            hestia_protocol::push::check_subscription(&r.subscription, true)
                .map_err(|e| corrupt(cf, &e.to_string()))
        }
        BLOBID_INDEX_CHUNK => {
            decode_chunk_key(key).ok_or_else(|| corrupt(cf, "bad key"))?;
            let full = hestia_protocol::file::SEALED_CHUNK_BYTES as usize;
            if value.len() > full || value.len() < hestia_protocol::file::TAG_BYTES {
                return Err(corrupt(cf, "not a sealed chunk"));
            }
            Ok(())
        }
        KEY_IDENTITY => match key {
            b"identity" => decode_value::<StoredIdentity>(cf, value).map(drop),
            b"prekeys" => PrekeySecrets::from_stored(value)
                .map(drop)
                .map_err(|e| corrupt(cf, &e.to_string())),
            _ => Err(corrupt(cf, "unknown key")),
        },
        NAME_CONTACT => {
            let c: Contact = decode_value(cf, value)?;
            named(cf, c.name.as_bytes() == key)
        }
        SEQ_MESSAGE => {
            decode_seq(key).ok_or_else(|| corrupt(cf, "bad key"))?;
            decode_value::<StoredMessage>(cf, value).map(drop)
        }
        ENVELOPEID_SEQ => {
            key_len(cf, key, 16)?;
            decode_seq(value)
                .map(drop)
                .ok_or_else(|| corrupt(cf, "bad value"))
        }
        USERID_SESSIONS => {
            key_len(cf, key, 32)?;
            let list: Vec<Vec<u8>> = decode_value(cf, value)?;
            for s in &list {
                Session::from_stored(s).map_err(|e| corrupt(cf, &e.to_string()))?;
            }
            Ok(())
        }
        USERID_BLOCKED => key_len(cf, key, 32),
        USERID_RECEIPTS => {
            key_len(cf, key, 32)?;
            decode_value::<PendingReceipts>(cf, value).map(drop)
        }
        USERID_SKIPPED => {
            key_len(cf, key, 32)?;
            if value.len() == 4 {
                Ok(())
            } else {
                Err(corrupt(cf, "bad value"))
            }
        }
        ENVELOPEID_FILE => {
            key_len(cf, key, 16)?;
            let f: StoredFile = decode_value(cf, value)?;
            f.file.check().map_err(|e| corrupt(cf, &e.to_string()))
        }
        ENVELOPEID_UNSENT => {
            key_len(cf, key, 16)?;
            let u: UnsentEnvelope = decode_value(cf, value)?;
            named(cf, u.envelope.id.0 == key)
        }
        BLOBID_UPLOAD => {
            key_len(cf, key, 16)?;
            let u: StoredUpload = decode_value(cf, value)?;
            named(cf, u.file.blob.0 == key)?;
            u.file.check().map_err(|e| corrupt(cf, &e.to_string()))
        }
        // Settings are the device library's own small encodings (it checks them as it reads).
        NAME_SETTING => std::str::from_utf8(key)
            .map(drop)
            .map_err(|_| corrupt(cf, "bad key")),
        _ => Err(corrupt(cf, "no check for this family")),
    }
}
