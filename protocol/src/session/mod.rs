//! Forward-secret sessions: X3DH key agreement and the Double Ratchet with header encryption, as
//! in Signal's published specifications, with Hestia's primitives (X25519, HKDF-SHA256,
//! HMAC-SHA256, XChaCha20-Poly1305).
//!
//! - [`prekeys`]: a user's signed prekey (rotated on a schedule, old ones kept for a grace period)
//!   and one-time prekeys, with the bundle a node hands out.
//! - [`x3dh`]: the initiator's and responder's halves of the key agreement.
//! - [`ratchet`]: the Double Ratchet session, its wire message and its versioned stored form.
//!
//! Every secret lives in a [`Secret32`], which zeroizes on drop and never prints. Every rejection
//! is a [`SessionError`] variant; a failed decryption leaves the session exactly as it was.

pub mod prekeys;
pub mod ratchet;
pub mod x3dh;

use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte secret (key, chain key, private scalar). Zeroized on drop; `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct Secret32(pub(crate) [u8; 32]);

impl Secret32 {
    pub fn random(rng: &mut impl rand::CryptoRng) -> Self {
        let mut s = Secret32([0u8; 32]);
        rng.fill_bytes(&mut s.0);
        s
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Secret32(bytes)
    }
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
    /// The X25519 public key of this secret used as a private scalar.
    pub fn x25519_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(self.0)).to_bytes()
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SessionError {
    #[error("the signed prekey's signature does not verify under the identity key")]
    BadPrekeySignature,
    #[error("identity key is not a usable public key")]
    BadIdentityKey,
    #[error("key agreement gave an all-zero (low-order) result")]
    LowOrderPoint,
    #[error("the signed prekey named by this message is unknown or retired")]
    UnknownSignedPrekey,
    #[error("the one-time prekey named by this message was already used")]
    OneTimePrekeyReused,
    #[error("the one-time prekey named by this message is unknown")]
    UnknownOneTimePrekey,
    #[error("message was already decrypted (replay)")]
    Replay,
    #[error("message is {gap} messages ahead in its chain; at most {max} are accepted")]
    GapTooLarge { gap: u64, max: u32 },
    #[error("no header key of this session opens the message header")]
    UnknownHeaderKey,
    #[error("message does not authenticate (tampered, or not for this session)")]
    Unauthentic,
    #[error("this session has no sending chain yet (it must receive first)")]
    NotReadyToSend,
    #[error("malformed session message: {0}")]
    Malformed(&'static str),
    #[error("stored session has unsupported version {0}")]
    StoredVersion(u16),
    #[error("stored session is corrupt")]
    StoredCorrupt,
    #[error("state too large to store (a bound was not kept)")]
    StoredTooLarge,
    #[error("chain counter exhausted; start a new session")]
    ChainExhausted,
}

/// X25519 with the all-zero check the specifications require: a low-order peer key makes the
/// result all zeros and contributes nothing, so it is refused.
pub(crate) fn dh(secret: &Secret32, public: &[u8; 32]) -> Result<Secret32, SessionError> {
    let s = x25519_dalek::StaticSecret::from(secret.0);
    let shared = s.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(SessionError::LowOrderPoint);
    }
    Ok(Secret32(shared.to_bytes()))
}

/// HKDF-SHA256 into `out`. Lengths used here (≤ 96 bytes) are always valid.
pub(crate) fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("HKDF-SHA256 output of at most 255*32 bytes");
}

/// Public keys are encoded, for signatures and associated data, as Signal's `Encode(PK)`: one
/// byte naming the curve form, then the 32 key bytes.
pub const CURVE25519_TYPE: u8 = 0x05;
/// The type byte for an ed25519 (Edwards form) identity key.
pub const ED25519_TYPE: u8 = 0xED;

pub(crate) fn encode_curve25519(key: &[u8; 32]) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = CURVE25519_TYPE;
    out[1..].copy_from_slice(key);
    out
}

pub(crate) fn encode_ed25519(key: &[u8; 32]) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = ED25519_TYPE;
    out[1..].copy_from_slice(key);
    out
}
