//! The envelope: what nodes store and relay.
//!
//! The clear header carries only what a relay needs: format version, envelope id (for dedupe and
//! acknowledgement), recipient user id (to pick the mailbox), expiry (to drop it) and the body,
//! whose length is padded to a bucket. The sender, the send time and the content travel inside
//! the sealed body as a signed [`Letter`]; the header is the sealed box's associated data, so a
//! relay cannot move a body under another header.

use crate::codec;
use crate::identity::{IdentityError, IdentityKey, Sig, UserId};
use crate::seal::{self, SealError};
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

/// What the sender signs and seals: who sent it, from which home node, when, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    pub sender: UserId,
    /// The sender's home node peer id, so the recipient can reply.
    pub sender_node: String,
    /// The name the sender goes by (their account handle). With `sender_node` it names the
    /// account a contact is pinned to: a known handle under a new key is a key change.
    pub sender_name: String,
    pub sent_at: Millis,
    pub content: Content,
    pub signature: Sig,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    Text(String),
    /// End-to-end delivery receipt: these envelopes reached the recipient's device. Sent as an
    /// ordinary sealed envelope, so nodes cannot tell receipts from messages.
    Receipt(Vec<EnvelopeId>),
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
    #[error("account name longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong,
    #[error("envelope is for another recipient")]
    WrongRecipient,
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("letter inside the envelope is malformed")]
    MalformedLetter,
    #[error("sender's signature does not verify")]
    BadSenderSignature,
    #[error(transparent)]
    Identity(#[from] IdentityError),
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

fn signed_bytes(
    id: &EnvelopeId,
    recipient: &UserId,
    sender: &UserId,
    sender_node: &str,
    sender_name: &str,
    sent_at: Millis,
    content: &Content,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut m = b"hestia/letter/v1".to_vec();
    m.extend_from_slice(&id.0);
    m.extend_from_slice(recipient.as_bytes());
    m.extend_from_slice(sender.as_bytes());
    m.extend_from_slice(&(sender_node.len() as u32).to_be_bytes());
    m.extend_from_slice(sender_node.as_bytes());
    m.extend_from_slice(&(sender_name.len() as u32).to_be_bytes());
    m.extend_from_slice(sender_name.as_bytes());
    m.extend_from_slice(&sent_at.to_be_bytes());
    m.extend_from_slice(&codec::encode(content).map_err(|_| EnvelopeError::MalformedLetter)?);
    Ok(m)
}

/// Pads to the smallest bucket that holds a 4-byte big-endian length and the bytes.
fn pad(bytes: &[u8]) -> Option<Vec<u8>> {
    let need = bytes.len() + 4;
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
    /// Seals `content` from `sender` to `recipient`, expiring `ttl` after `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        rng: &mut impl CryptoRng,
        sender: &IdentityKey,
        sender_node: &str,
        sender_name: &str,
        recipient: &UserId,
        content: Content,
        now: Millis,
        ttl: Millis,
    ) -> Result<Envelope, EnvelopeError> {
        match &content {
            Content::Text(t) if t.len() > MAX_TEXT_BYTES => {
                return Err(EnvelopeError::TextTooLong(t.len()));
            }
            Content::Receipt(ids) if ids.len() > MAX_RECEIPT_IDS => {
                return Err(EnvelopeError::ReceiptTooLong);
            }
            _ => {}
        }
        if sender_name.len() > MAX_NAME_BYTES {
            return Err(EnvelopeError::NameTooLong);
        }
        let id = EnvelopeId::random(rng);
        let expires_at = now.saturating_add(ttl.min(MAX_TTL_MS));
        let me = sender.user_id();
        let signature = sender.sign(&signed_bytes(
            &id,
            recipient,
            &me,
            sender_node,
            sender_name,
            now,
            &content,
        )?);
        let letter = Letter {
            sender: me,
            sender_node: sender_node.to_string(),
            sender_name: sender_name.to_string(),
            sent_at: now,
            content,
            signature,
        };
        let plain = codec::encode(&letter).map_err(|_| EnvelopeError::MalformedLetter)?;
        let padded = pad(&plain).ok_or(EnvelopeError::TextTooLong(plain.len()))?;
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

    /// What a relay checks before it stores an envelope. It cannot check more: the body is opaque.
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

    /// Opens the envelope as its recipient and checks the sender's signature.
    pub fn open(&self, me: &IdentityKey) -> Result<Letter, EnvelopeError> {
        if self.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(self.version));
        }
        if self.recipient != me.user_id() {
            return Err(EnvelopeError::WrongRecipient);
        }
        let aad = header_aad(&self.id, &self.recipient, self.expires_at);
        let padded = seal::open(me, &self.body, &aad)?;
        let plain = unpad(&padded).ok_or(EnvelopeError::MalformedLetter)?;
        let letter: Letter =
            codec::decode(plain, MAX_LETTER_BYTES).map_err(|_| EnvelopeError::MalformedLetter)?;
        let signed = signed_bytes(
            &self.id,
            &self.recipient,
            &letter.sender,
            &letter.sender_node,
            &letter.sender_name,
            letter.sent_at,
            &letter.content,
        )?;
        letter
            .sender
            .verify(&signed, &letter.signature)
            .map_err(|_| EnvelopeError::BadSenderSignature)?;
        Ok(letter)
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

    /// A one-letter text from `a` to `b`, sent at 0 and expiring at 10.
    fn short_lived(rng: &mut rand::rngs::StdRng, a: &IdentityKey, b: &IdentityKey) -> Envelope {
        Envelope::seal(
            rng,
            a,
            "n",
            "alice",
            &b.user_id(),
            Content::Text("x".into()),
            0,
            10,
        )
        .unwrap()
    }

    #[test]
    fn seal_open_round_trip_hides_length() {
        let (mut rng, alice, bob) = setup();
        let e1 = Envelope::seal(
            &mut rng,
            &alice,
            "nodeA",
            "alice",
            &bob.user_id(),
            Content::Text("hi".into()),
            1000,
            DEFAULT_TTL_MS,
        )
        .unwrap();
        let e2 = Envelope::seal(
            &mut rng,
            &alice,
            "nodeA",
            "alice",
            &bob.user_id(),
            Content::Text("a somewhat longer hello, still small".into()),
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
        let l = e1.open(&bob).unwrap();
        assert_eq!(l.sender, alice.user_id());
        assert_eq!(l.content, Content::Text("hi".into()));
        assert_eq!(e1.open(&alice), Err(EnvelopeError::WrongRecipient));
    }

    #[test]
    fn header_is_bound_to_body() {
        let (mut rng, alice, bob) = setup();
        let mut e = short_lived(&mut rng, &alice, &bob);
        e.expires_at += 1;
        assert!(matches!(
            e.open(&bob),
            Err(EnvelopeError::Seal(SealError::Unauthentic))
        ));
    }

    #[test]
    fn relay_checks() {
        let (mut rng, alice, bob) = setup();
        let e = short_lived(&mut rng, &alice, &bob);
        assert_eq!(e.check_header(10), Err(EnvelopeError::Expired));
        let mut big = e.clone();
        big.body = vec![0; MAX_BODY_BYTES + 1];
        assert!(matches!(
            big.check_header(0),
            Err(EnvelopeError::BodyTooLarge(_))
        ));
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            Envelope::seal(
                &mut rng,
                &alice,
                "n",
                "alice",
                &bob.user_id(),
                Content::Text(long),
                0,
                10
            ),
            Err(EnvelopeError::TextTooLong(_))
        ));
    }
}
