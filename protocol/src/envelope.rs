//! The envelope: what nodes store and relay.
//!
//! The clear header carries only what a relay needs: format version, envelope id (for dedupe and
//! acknowledgement), recipient user id (to pick the mailbox), expiry (to drop it) and the body,
//! whose length is padded to a bucket. The body is sealed sender: a sealed box to the recipient's
//! identity key holding a [`SealedSender`] -- the sender's identity and a Double Ratchet message
//! whose plaintext is the [`Letter`]. Relays never see who sent it; the recipient's node learns
//! only the recipient. The header is the sealed box's associated data, so a relay cannot move a
//! body under another header.

use crate::codec;
use crate::identity::{IdentityError, IdentityKey, UserId};
use crate::seal::{self, SealError};
use crate::session::ratchet::RatchetMessage;
use crate::{Millis, identity};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use std::fmt;

pub const ENVELOPE_VERSION: u8 = 1;
/// Padded plaintext sizes. A relay learns only which bucket a message falls in.
pub const PADDING_BUCKETS: [usize; 4] = [256, 1024, 4096, 16384];
/// The largest body a relay accepts: the largest bucket, sealed.
pub const MAX_BODY_BYTES: usize = PADDING_BUCKETS[PADDING_BUCKETS.len() - 1] + seal::OVERHEAD;
/// The longest a node will hold an envelope: beyond this an offline user's mail is dropped, so
/// storage on a node is bounded in time as well as in count.
pub const MAX_TTL_MS: Millis = 30 * 24 * 3600 * 1000;
/// Default time to live for a message.
pub const DEFAULT_TTL_MS: Millis = 7 * 24 * 3600 * 1000;
/// Longest text a user may send in one message (it must fit the largest bucket with its letter).
pub const MAX_TEXT_BYTES: usize = 12 * 1024;
/// Most envelope ids in one delivery receipt.
pub const MAX_RECEIPT_IDS: usize = 64;
/// Longest account handle, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest node id (a libp2p peer id in base58: 52 characters for an ed25519 key; room for
/// longer key types).
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Bound on a decoded letter.
const MAX_LETTER_BYTES: usize = PADDING_BUCKETS[PADDING_BUCKETS.len() - 1];

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EnvelopeId(pub [u8; 16]);

impl EnvelopeId {
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        EnvelopeId(b)
    }
    pub fn to_hex(&self) -> String {
        identity::hex(&self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        identity::unhex(s)?.try_into().ok().map(EnvelopeId)
    }
}

impl fmt::Debug for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for EnvelopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..12])
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    pub id: EnvelopeId,
    pub recipient: UserId,
    pub expires_at: Millis,
    #[serde(with = "crate::codec::bytes")]
    pub body: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("recipient", &crate::redact::User(&self.recipient))
            .field("expires_at", &self.expires_at)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The sealed-sender layer: what the sealed box in an envelope's body carries. Only the
/// recipient reads the sender's identity; the session message authenticates it (its associated
/// data binds both identity keys, and X3DH or the ratchet fails under any other key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSender {
    pub sender: UserId,
    pub message: RatchetMessage,
}

/// The plaintext of a session message: from which home node and under which name the sender
/// writes, when, and what. Not signed: the session authenticates it to the recipient without
/// giving anyone else a proof of who wrote it (deniability, as in Signal).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    /// The sender's home node peer id, so the recipient can reply.
    pub sender_node: String,
    /// The name the sender goes by (their account handle). With `sender_node` it names the
    /// account a contact is pinned to: a known handle under a new key is a key change.
    pub sender_name: String,
    pub sent_at: Millis,
    pub content: Content,
}

impl Letter {
    /// A letter, checked against the size limits.
    pub fn new(
        sender_node: &str,
        sender_name: &str,
        content: Content,
        now: Millis,
    ) -> Result<Letter, EnvelopeError> {
        let l = Letter {
            sender_node: sender_node.to_string(),
            sender_name: sender_name.to_string(),
            sent_at: now,
            content,
        };
        l.check()?;
        Ok(l)
    }

    /// The limits every letter keeps, checked when one is made and again when one is received
    /// (a modified client may send anything the codec can carry).
    pub fn check(&self) -> Result<(), EnvelopeError> {
        match &self.content {
            Content::Text(t) if t.len() > MAX_TEXT_BYTES => {
                return Err(EnvelopeError::TextTooLong(t.len()));
            }
            Content::Receipt(ids) | Content::SessionReset(ids) if ids.len() > MAX_RECEIPT_IDS => {
                return Err(EnvelopeError::ReceiptTooLong);
            }
            Content::File(f) => f.check().map_err(EnvelopeError::BadFile)?,
            Content::Call(c) => c.check().map_err(EnvelopeError::BadCall)?,
            _ => {}
        }
        if !valid_name(&self.sender_name) {
            return Err(EnvelopeError::BadName);
        }
        if !valid_node_id(&self.sender_node) {
            return Err(EnvelopeError::BadNodeId);
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        codec::encode(self).map_err(|_| EnvelopeError::MalformedLetter)
    }

    /// Decodes and checks a received letter: one that breaks a limit is refused whole.
    pub fn from_bytes(bytes: &[u8]) -> Result<Letter, EnvelopeError> {
        let l: Letter =
            codec::decode(bytes, MAX_LETTER_BYTES).map_err(|_| EnvelopeError::MalformedLetter)?;
        l.check()?;
        Ok(l)
    }
}

/// An account handle: 1 to [`MAX_NAME_BYTES`] bytes of ASCII letters, digits, `-`, `_`, `.`.
/// Nothing a terminal could interpret and nothing that looks like another character.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

/// A node id as peer ids print: 1 to [`MAX_NODE_ID_BYTES`] characters of base58.
pub fn valid_node_id(node: &str) -> bool {
    const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    !node.is_empty() && node.len() <= MAX_NODE_ID_BYTES && node.bytes().all(|c| BASE58.contains(&c))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    Text(String),
    /// End-to-end delivery receipt: these envelopes reached the recipient's device. Sent as an
    /// ordinary sealed envelope, so nodes cannot tell receipts from messages.
    Receipt(Vec<EnvelopeId>),
    /// The recipient could not decrypt these envelopes (its session with the sender broke: a
    /// lost or substituted prekey, a restored device). Sent in a *new* session the recipient
    /// started from the sender's bundle, so the next messages go on a working one.
    SessionReset(Vec<EnvelopeId>),
    /// A file: what it is, how to open it and where its encrypted chunks are
    /// ([`crate::file`]). Its caption is the message's text.
    File(Box<crate::file::FileRef>),
    /// Call signalling ([`crate::call`]): an offer rings the recipient, and so on.
    Call(crate::call::CallSignal),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("envelope body of {0} bytes exceeds the limit")]
    BodyTooLarge(usize),
    #[error("envelope expired")]
    Expired,
    #[error("envelope expiry is further out than the node accepts")]
    ExpiryTooFar,
    #[error("message text of {0} bytes exceeds the limit of {MAX_TEXT_BYTES}")]
    TextTooLong(usize),
    #[error("too many ids in one receipt")]
    ReceiptTooLong,
    #[error("account name is not 1 to {MAX_NAME_BYTES} bytes of letters, digits, '-', '_' or '.'")]
    BadName,
    #[error("node id is not 1 to {MAX_NODE_ID_BYTES} characters of base58")]
    BadNodeId,
    #[error("envelope is for another recipient")]
    WrongRecipient,
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("letter inside the envelope is malformed")]
    MalformedLetter,
    #[error("file reference refused: {0}")]
    BadFile(crate::file::FileError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("bad call signal: {0}")]
    BadCall(crate::call::CallSignalError),
}

fn header_aad(id: &EnvelopeId, recipient: &UserId, expires_at: Millis) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + 16 + 32 + 8 + 16);
    aad.extend_from_slice(b"hestia/env/v1");
    aad.push(ENVELOPE_VERSION);
    aad.extend_from_slice(&id.0);
    aad.extend_from_slice(recipient.as_bytes());
    aad.extend_from_slice(&expires_at.to_be_bytes());
    aad
}

/// Bytes an X3DH header adds to a session message (`Some(PrekeyHeader)` with a one-time
/// prekey, against `None`). Every session message is padded as if it carried one, so the first
/// messages of a session do not stand out by size.
pub const PREKEY_HEADER_RESERVE: usize = 32 + 32 + 32 + 1 + 32;

/// `len (4) ‖ bytes ‖ zeros` up to the smallest bucket that holds `bytes` plus `reserve`.
fn pad(bytes: &[u8], reserve: usize) -> Option<Vec<u8>> {
    let need = bytes.len() + 4 + reserve;
    let bucket = *PADDING_BUCKETS.iter().find(|b| **b >= need)?;
    let mut out = Vec::with_capacity(bucket);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out.resize(bucket, 0);
    Some(out)
}

fn unpad(padded: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(padded.get(..4)?.try_into().ok()?) as usize;
    padded.get(4..4 + len)
}

impl Envelope {
    /// Pads `inner` to its bucket and seals it to `recipient` under a fresh envelope id; the
    /// header is the sealed box's associated data.
    pub fn seal_body(
        rng: &mut impl CryptoRng,
        recipient: &UserId,
        inner: &[u8],
        now: Millis,
        ttl: Millis,
    ) -> Result<Envelope, EnvelopeError> {
        let id = EnvelopeId::random(rng);
        Envelope::seal_body_as(rng, id, recipient, inner, now, ttl)
    }

    /// [`Envelope::seal_body`] under an id chosen earlier (a message recorded on the device
    /// before it could be encrypted keeps its id).
    pub fn seal_body_as(
        rng: &mut impl CryptoRng,
        id: EnvelopeId,
        recipient: &UserId,
        inner: &[u8],
        now: Millis,
        ttl: Millis,
    ) -> Result<Envelope, EnvelopeError> {
        Envelope::seal_padded(rng, id, recipient, inner, 0, now, ttl)
    }

    #[allow(clippy::too_many_arguments)]
    fn seal_padded(
        rng: &mut impl CryptoRng,
        id: EnvelopeId,
        recipient: &UserId,
        inner: &[u8],
        reserve: usize,
        now: Millis,
        ttl: Millis,
    ) -> Result<Envelope, EnvelopeError> {
        let expires_at = now.saturating_add(ttl.min(MAX_TTL_MS));
        let padded = pad(inner, reserve).ok_or(EnvelopeError::TextTooLong(inner.len()))?;
        let body = seal::seal(
            rng,
            recipient,
            &padded,
            &header_aad(&id, recipient, expires_at),
        )?;
        Ok(Envelope {
            version: ENVELOPE_VERSION,
            id,
            recipient: *recipient,
            expires_at,
            body,
        })
    }

    /// Seals a session message from `sender` (sealed sender: the identity is inside the body).
    pub fn seal_message(
        rng: &mut impl CryptoRng,
        id: EnvelopeId,
        recipient: &UserId,
        sender: &UserId,
        message: RatchetMessage,
        now: Millis,
        ttl: Millis,
    ) -> Result<Envelope, EnvelopeError> {
        let reserve = if message.prekey.is_some() {
            0
        } else {
            PREKEY_HEADER_RESERVE
        };
        let inner = codec::encode(&SealedSender {
            sender: *sender,
            message,
        })
        .map_err(|_| EnvelopeError::MalformedLetter)?;
        Envelope::seal_padded(rng, id, recipient, &inner, reserve, now, ttl)
    }

    pub fn check_header(&self, now: Millis) -> Result<(), EnvelopeError> {
        if self.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(self.version));
        }
        if self.body.len() > MAX_BODY_BYTES {
            return Err(EnvelopeError::BodyTooLarge(self.body.len()));
        }
        if self.expires_at <= now {
            return Err(EnvelopeError::Expired);
        }
        // Allow a minute of clock skew between the sender's device and this node.
        if self.expires_at > now.saturating_add(MAX_TTL_MS + 60_000) {
            return Err(EnvelopeError::ExpiryTooFar);
        }
        Ok(())
    }

    /// Opens the sealed box as its recipient and returns the unpadded contents.
    pub fn open_body(&self, me: &IdentityKey) -> Result<Vec<u8>, EnvelopeError> {
        if self.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(self.version));
        }
        if self.recipient != me.user_id() {
            return Err(EnvelopeError::WrongRecipient);
        }
        let aad = header_aad(&self.id, &self.recipient, self.expires_at);
        let padded = seal::open(me, &self.body, &aad)?;
        Ok(unpad(&padded)
            .ok_or(EnvelopeError::MalformedLetter)?
            .to_vec())
    }

    /// Opens the sealed-sender layer: who claims to have sent it, and the session message that
    /// proves it (or not) when decrypted.
    pub fn open_message(&self, me: &IdentityKey) -> Result<SealedSender, EnvelopeError> {
        let inner = self.open_body(me)?;
        codec::decode(&inner, MAX_LETTER_BYTES).map_err(|_| EnvelopeError::MalformedLetter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (rand::rngs::StdRng, IdentityKey, IdentityKey) {
        let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(9);
        let a = IdentityKey::generate(&mut rng);
        let b = IdentityKey::generate(&mut rng);
        (rng, a, b)
    }

    /// An envelope to `b`, sent at 0 and expiring at 10.
    fn short_lived(rng: &mut rand::rngs::StdRng, b: &IdentityKey) -> Envelope {
        Envelope::seal_body(rng, &b.user_id(), b"x", 0, 10).unwrap()
    }

    #[test]
    fn seal_open_round_trip_hides_length() {
        let (mut rng, alice, bob) = setup();
        let e1 =
            Envelope::seal_body(&mut rng, &bob.user_id(), b"hi", 1000, DEFAULT_TTL_MS).unwrap();
        let e2 = Envelope::seal_body(
            &mut rng,
            &bob.user_id(),
            b"a somewhat longer hello, still small",
            1000,
            DEFAULT_TTL_MS,
        )
        .unwrap();
        assert_eq!(
            e1.body.len(),
            e2.body.len(),
            "same bucket, same size on the wire"
        );
        assert!(e1.check_header(1001).is_ok());
        assert_eq!(e1.open_body(&bob).unwrap(), b"hi");
        assert_eq!(e1.open_body(&alice), Err(EnvelopeError::WrongRecipient));
    }

    #[test]
    fn sealed_sender_names_the_sender_only_inside() {
        let (mut rng, alice, bob) = setup();
        let msg = RatchetMessage {
            prekey: None,
            header: vec![1; 80],
            ciphertext: vec![2; 40],
        };
        let id = EnvelopeId([5; 16]);
        let e = Envelope::seal_message(
            &mut rng,
            id,
            &bob.user_id(),
            &alice.user_id(),
            msg.clone(),
            0,
            10,
        )
        .unwrap();
        let clear = codec::encode(&e).unwrap();
        let a = alice.user_id();
        assert!(
            !clear.windows(32).any(|w| w == a.as_bytes()),
            "the sender's key appears nowhere in the clear"
        );
        assert_eq!(e.id, id);
        let opened = e.open_message(&bob).unwrap();
        assert_eq!(opened.sender, alice.user_id());
        assert_eq!(opened.message, msg);
    }

    #[test]
    fn first_messages_of_a_session_do_not_stand_out_by_size() {
        use crate::session::x3dh::PrekeyHeader;
        let (mut rng, alice, bob) = setup();
        // For every text length, a message with an X3DH header and one without land in the
        // same bucket, and the reserve is exactly what the header adds.
        let header = PrekeyHeader {
            identity: alice.user_id(),
            ephemeral: [1; 32],
            signed_prekey: [2; 32],
            one_time: Some([3; 32]),
        };
        for len in (0..2000).step_by(7) {
            let plain = RatchetMessage {
                prekey: None,
                header: vec![0; 80],
                ciphertext: vec![0; len],
            };
            let first = RatchetMessage {
                prekey: Some(header.clone()),
                ..plain.clone()
            };
            assert_eq!(
                codec::encoded_len(&first).unwrap() - codec::encoded_len(&plain).unwrap(),
                PREKEY_HEADER_RESERVE
            );
            let seal = |rng: &mut rand::rngs::StdRng, m: RatchetMessage| {
                Envelope::seal_message(
                    rng,
                    EnvelopeId([0; 16]),
                    &bob.user_id(),
                    &alice.user_id(),
                    m,
                    0,
                    10,
                )
                .unwrap()
                .body
                .len()
            };
            assert_eq!(
                seal(&mut rng, plain),
                seal(&mut rng, first),
                "text length {len}"
            );
        }
    }

    #[test]
    fn header_is_bound_to_body() {
        let (mut rng, _, bob) = setup();
        let mut e = short_lived(&mut rng, &bob);
        e.expires_at += 1;
        assert!(matches!(
            e.open_body(&bob),
            Err(EnvelopeError::Seal(SealError::Unauthentic))
        ));
    }

    #[test]
    fn relay_checks_and_letter_limits() {
        let (mut rng, _, bob) = setup();
        let e = short_lived(&mut rng, &bob);
        assert_eq!(e.check_header(10), Err(EnvelopeError::Expired));
        let mut big = e.clone();
        big.body = vec![0; MAX_BODY_BYTES + 1];
        assert!(matches!(
            big.check_header(0),
            Err(EnvelopeError::BodyTooLarge(_))
        ));
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            Letter::new("n", "alice", Content::Text(long), 0),
            Err(EnvelopeError::TextTooLong(_))
        ));
        let l = Letter::new("n", "alice", Content::Text("hi".into()), 5).unwrap();
        assert_eq!(Letter::from_bytes(&l.to_bytes().unwrap()).unwrap(), l);
        assert_eq!(
            Letter::from_bytes(&[0xff; 8]),
            Err(EnvelopeError::MalformedLetter)
        );
    }

    #[test]
    fn a_received_letter_keeps_the_sending_limits() {
        // A modified client builds letters by hand: each broken limit is refused on receipt.
        let good = Letter::new("12D3KooW", "bob", Content::Text("hi".into()), 5).unwrap();
        let refused = |l: Letter| Letter::from_bytes(&codec::encode(&l).unwrap()).unwrap_err();
        let with = |f: &dyn Fn(&mut Letter)| {
            let mut l = good.clone();
            f(&mut l);
            l
        };
        assert_eq!(
            refused(with(&|l| l.sender_name = "bob\u{1b}[2K".into())),
            EnvelopeError::BadName
        );
        assert_eq!(
            refused(with(&|l| l.sender_name = String::new())),
            EnvelopeError::BadName
        );
        assert_eq!(
            refused(with(&|l| l.sender_name = "b".repeat(MAX_NAME_BYTES + 1))),
            EnvelopeError::BadName
        );
        assert_eq!(
            refused(with(&|l| l.sender_node = "node\n".into())),
            EnvelopeError::BadNodeId
        );
        assert_eq!(
            refused(with(&|l| l.sender_node = "1".repeat(MAX_NODE_ID_BYTES + 1))),
            EnvelopeError::BadNodeId
        );
        assert_eq!(
            refused(with(
                &|l| l.content = Content::Text("x".repeat(MAX_TEXT_BYTES + 1))
            )),
            EnvelopeError::TextTooLong(MAX_TEXT_BYTES + 1)
        );
        assert_eq!(
            refused(with(&|l| l.content =
                Content::Receipt(vec![
                    EnvelopeId([0; 16]);
                    MAX_RECEIPT_IDS + 1
                ]))),
            EnvelopeError::ReceiptTooLong
        );
        assert!(Letter::new("12D3KooW", "b\u{202e}ob", Content::Text("x".into()), 0).is_err());
    }
}
