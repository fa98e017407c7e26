//! Every column family of both databases, the schema version, and the only code that encodes
//! keys. Column families are named `key_value`. Integers in keys are big-endian so that byte
//! order is numeric order; variable-length parts are length-prefixed with one byte.

use hestia_protocol::envelope::EnvelopeId;
use hestia_protocol::file::BlobId;
use hestia_protocol::identity::UserId;

/// Bumped with every change to a stored form; [`crate::node::NodeDb::open`] and
/// [`crate::client::ClientDb::open`] refuse a newer database and migrate an older one step by step.
/// 7 added call entries to a device's history (`MessageState::Call`): nothing to migrate, but an
/// older binary would not read them. 8 lets a device's data be encrypted at rest (`meta` →
/// `"vault"`, [`crate::vault`]): nothing to migrate, but an older binary would take the sealed
/// values for corrupt ones.
/// 9 added the operator's state to a node's database (suspensions, invites, federation
/// policy): nothing to migrate, but an older binary would not open its new families.
pub const SCHEMA_VERSION: u32 = 9;

/// `meta`: `"schema_version"` → u32 BE; `"kind"` → `node` | `client`; `"node_key"` → the node's
/// libp2p key (protobuf encoding) in the node database; `"vapid_key"` → the node's P-256 VAPID
/// secret (32 bytes, schema 6), which signs its push wake-ups; `"turn_secret"` → 32 random
/// bytes from which the node's call-relay credentials are derived (added without a schema
/// change: an older node ignores it); `"vault"` → in a device database whose data is encrypted,
/// the wrapped data key ([`crate::records::VaultRecord`], schema 8). With a vault, every other
/// family's values are sealed and every key but `seq_message`'s is blinded ([`crate::vault`]).
pub const META: &str = "meta";

// Node database.
/// `userid_account`: user id (32) → stored account.
pub const USERID_ACCOUNT: &str = "userid_account";
/// `userid_envelopeid_mailbox`: user id (32) ‖ envelope id (16) → envelope.
pub const USERID_ENVELOPEID_MAILBOX: &str = "userid_envelopeid_mailbox";
/// `nodeid_envelopeid_outbox`: len (1) ‖ node peer id ‖ envelope id (16) → outbox record.
pub const NODEID_ENVELOPEID_OUTBOX: &str = "nodeid_envelopeid_outbox";
/// `userid_envelopeid_mailboxmeta`: the mailbox key → expiry and body size (schema 4). What a
/// restart reads: the relay core keeps no bodies.
pub const USERID_ENVELOPEID_MAILBOXMETA: &str = "userid_envelopeid_mailboxmeta";
/// `nodeid_envelopeid_outboxmeta`: the outbox key → owner, expiry and body size (schema 4).
pub const NODEID_ENVELOPEID_OUTBOXMETA: &str = "nodeid_envelopeid_outboxmeta";
/// `envelopeid_status`: envelope id (16) → delivery-state record of an envelope sent from here.
pub const ENVELOPEID_STATUS: &str = "envelopeid_status";

/// `blobid_blob`: blob id (16) → the upload's record: owner, spec, phase, chunks held (schema 5).
pub const BLOBID_BLOB: &str = "blobid_blob";
/// `blobid_index_chunk`: blob id (16) ‖ chunk index (4, BE) → a sealed file chunk (schema 5
/// only). Since schema 6 chunks are plain files beside the database (`chunks.rs`, measured
/// faster); the migration moves any held here into them and empties this family.
pub const BLOBID_INDEX_CHUNK: &str = "blobid_index_chunk";

/// `userid_endpoint_push`: user id (32) ‖ endpoint id (16, `push::endpoint_id`) → a Web Push
/// subscription of the user's and whether the push service has removed it (schema 6).
pub const USERID_ENDPOINT_PUSH: &str = "userid_endpoint_push";

/// `userid_signedprekey`: user id (32) → the user's current signed prekey (schema 2).
pub const USERID_SIGNEDPREKEY: &str = "userid_signedprekey";
/// `userid_onetimeprekey`: user id (32) ‖ one-time prekey (32) → empty (schema 2). Deleted when
/// handed out.
pub const USERID_ONETIMEPREKEY: &str = "userid_onetimeprekey";

/// `userid_suspension`: user id (32) → the operator's suspension of that account (schema 9).
pub const USERID_SUSPENSION: &str = "userid_suspension";
/// `invitehash_invite`: SHA-256 of an invite token (32) → the invite (schema 9).
pub const INVITEHASH_INVITE: &str = "invitehash_invite";
/// `nodeid_federation`: node peer id (UTF-8) → the operator's rule for it (schema 9).
pub const NODEID_FEDERATION: &str = "nodeid_federation";

pub const NODE_CFS: &[&str] = &[
    META,
    USERID_ACCOUNT,
    USERID_ENVELOPEID_MAILBOX,
    NODEID_ENVELOPEID_OUTBOX,
    USERID_ENVELOPEID_MAILBOXMETA,
    NODEID_ENVELOPEID_OUTBOXMETA,
    ENVELOPEID_STATUS,
    USERID_SIGNEDPREKEY,
    USERID_ONETIMEPREKEY,
    BLOBID_BLOB,
    BLOBID_INDEX_CHUNK,
    USERID_ENDPOINT_PUSH,
    USERID_SUSPENSION,
    INVITEHASH_INVITE,
    NODEID_FEDERATION,
];

// Client database.
/// `key_identity`: `"identity"` → stored identity (secret seed, handle, home node);
/// `"prekeys"` → the prekey secrets' versioned stored form (schema 2).
pub const KEY_IDENTITY: &str = "key_identity";
/// `name_contact`: contact name (UTF-8) → stored contact (schema 3: a contact is its key, with
/// origin and name claim; schema 2 had a `Changed` trust state that the migration resolves).
pub const NAME_CONTACT: &str = "name_contact";
/// `seq_message`: sequence number (8, BE) → stored message.
pub const SEQ_MESSAGE: &str = "seq_message";
/// `envelopeid_seq`: envelope id (16) → sequence number (8, BE); dedupe and status updates.
pub const ENVELOPEID_SEQ: &str = "envelopeid_seq";

/// `userid_sessions`: remote user id (32) → the sessions with them, newest first, each in the
/// ratchet's versioned stored form (schema 2).
pub const USERID_SESSIONS: &str = "userid_sessions";

/// `userid_blocked`: user id (32) → empty; everything that key sends is dropped unread
/// (`contact reject`, schema 3).
pub const USERID_BLOCKED: &str = "userid_blocked";
/// `userid_receipts`: user id (32) → the delivery receipts owed to them and when they go
/// (schema 3).
pub const USERID_RECEIPTS: &str = "userid_receipts";
/// `userid_skipped`: remote user id (32) → skipped message keys held in the sessions with them
/// (u32 BE), so the device-wide bound is checked without decoding every session (schema 3).
pub const USERID_SKIPPED: &str = "userid_skipped";
/// `name_setting`: setting name (UTF-8) → value (schema 3): `"receipts"` → the receipt policy.
pub const NAME_SETTING: &str = "name_setting";
/// `envelopeid_file`: the id of the message carrying a file (16) → the file sent or received:
/// its reference (key, capability, where it is) and state (schema 5).
pub const ENVELOPEID_FILE: &str = "envelopeid_file";
/// `blobid_upload`: blob id (16) → an upload this device has begun and not yet announced
/// (schema 5): the source file and the reference being built.
pub const BLOBID_UPLOAD: &str = "blobid_upload";

/// `envelopeid_unsent`: envelope id (16) → a sealed envelope the device committed but its home
/// node has not acknowledged (schema 6): sent again, unchanged, by the next command that
/// reaches the node, so an ambiguous failure never becomes a second message.
pub const ENVELOPEID_UNSENT: &str = "envelopeid_unsent";

pub const CLIENT_CFS: &[&str] = &[
    META,
    KEY_IDENTITY,
    NAME_CONTACT,
    SEQ_MESSAGE,
    ENVELOPEID_SEQ,
    USERID_SESSIONS,
    USERID_BLOCKED,
    USERID_RECEIPTS,
    USERID_SKIPPED,
    NAME_SETTING,
    ENVELOPEID_FILE,
    BLOBID_UPLOAD,
    ENVELOPEID_UNSENT,
];

pub fn mailbox_key(user: &UserId, id: &EnvelopeId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(user.as_bytes());
    k[32..].copy_from_slice(&id.0);
    k
}

pub fn outbox_key(node: &str, id: &EnvelopeId) -> Vec<u8> {
    let n = node.as_bytes();
    let len = n.len().min(255);
    let mut k = Vec::with_capacity(1 + len + 16);
    k.push(len as u8);
    k.extend_from_slice(&n[..len]);
    k.extend_from_slice(&id.0);
    k
}

pub fn decode_mailbox_key(k: &[u8]) -> Option<(UserId, EnvelopeId)> {
    if k.len() != 48 {
        return None;
    }
    Some((
        UserId(k[..32].try_into().ok()?),
        EnvelopeId(k[32..].try_into().ok()?),
    ))
}

pub fn decode_outbox_key(k: &[u8]) -> Option<(String, EnvelopeId)> {
    let len = *k.first()? as usize;
    if k.len() != 1 + len + 16 {
        return None;
    }
    let node = std::str::from_utf8(&k[1..1 + len]).ok()?.to_string();
    Some((node, EnvelopeId(k[1 + len..].try_into().ok()?)))
}

pub fn one_time_prekey_key(user: &UserId, key: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(user.as_bytes());
    k[32..].copy_from_slice(key);
    k
}

pub fn push_key(user: &UserId, endpoint_id: &[u8; 16]) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(user.as_bytes());
    k[32..].copy_from_slice(endpoint_id);
    k
}

pub fn decode_push_key(k: &[u8]) -> Option<(UserId, [u8; 16])> {
    if k.len() != 48 {
        return None;
    }
    Some((UserId(k[..32].try_into().ok()?), k[32..].try_into().ok()?))
}

pub fn chunk_key(blob: &BlobId, index: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&blob.0);
    k[16..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The key range holding every chunk of `blob` (for a range delete): `[start, end)`.
pub fn chunk_range(blob: &BlobId) -> ([u8; 20], [u8; 21]) {
    let mut end = [0xffu8; 21];
    end[..16].copy_from_slice(&blob.0);
    (chunk_key(blob, 0), end)
}

pub fn decode_chunk_key(k: &[u8]) -> Option<(BlobId, u32)> {
    if k.len() != 20 {
        return None;
    }
    Some((
        BlobId(k[..16].try_into().ok()?),
        u32::from_be_bytes(k[16..].try_into().ok()?),
    ))
}

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn decode_seq(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically_and_separate_nodes() {
        assert!(seq_key(255) < seq_key(256));
        assert_eq!(decode_seq(&seq_key(77)), Some(77));
        let id = EnvelopeId([7; 16]);
        // "ab" ‖ id must not collide with "a" ‖ (b ‖ id…): the length prefix separates them.
        assert_ne!(outbox_key("ab", &id)[..3], outbox_key("a", &id)[..3]);
        let u = UserId([1; 32]);
        assert_eq!(&mailbox_key(&u, &id)[32..], &id.0);
        assert_eq!(decode_mailbox_key(&mailbox_key(&u, &id)), Some((u, id)));
        assert_eq!(
            decode_outbox_key(&outbox_key("ab", &id)),
            Some(("ab".into(), id))
        );
        assert_eq!(decode_outbox_key(&outbox_key("ab", &id)[1..]), None);
        assert_eq!(decode_mailbox_key(&[0; 47]), None);
    }
}
