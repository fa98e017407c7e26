//! The sealed box: encryption to a recipient's static X25519 key from a fresh ephemeral key.
//!
//! `sealed = ephemeral_public (32) || nonce (24) || XChaCha20-Poly1305(key, nonce, plaintext, aad)`
//! with `key = HKDF-SHA256(ikm = X25519(ephemeral, recipient), salt = ephemeral_public ||
//! recipient_public, info = "hestia/seal/v1")`. The sender is anonymous at this layer; the
//! envelope puts a signed sender identity inside the plaintext. This is not forward secret: the
//! sessions issue replaces it with X3DH and the Double Ratchet.

use crate::identity::{IdentityError, IdentityKey, UserId};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

const INFO: &[u8] = b"hestia/seal/v1";
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed box adds to its plaintext.
pub const OVERHEAD: usize = 32 + NONCE_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("recipient key is not a valid public key")]
    InvalidRecipient(#[from] IdentityError),
    #[error("key agreement gave a low-order (all-zero) result")]
    LowOrder,
    #[error("sealed box is too short")]
    Truncated,
    #[error("sealed box does not authenticate (wrong recipient, or tampered)")]
    Unauthentic,
}

fn derive_key(
    shared: &x25519_dalek::SharedSecret,
    eph: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    if !shared.was_contributory() {
        return Err(SealError::LowOrder);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Ok(key)
}

pub fn seal(
    rng: &mut impl CryptoRng,
    recipient: &UserId,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, SealError> {
    let their = recipient.x25519()?;
    let mut eph_bytes = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(eph_bytes.as_mut());
    let eph = x25519_dalek::StaticSecret::from(*eph_bytes);
    let eph_pub = x25519_dalek::PublicKey::from(&eph);
    let key = derive_key(
        &eph.diffie_hellman(&their),
        eph_pub.as_bytes(),
        their.as_bytes(),
    )?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SealError::Unauthentic)?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(eph_pub.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

pub fn open(me: &IdentityKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < OVERHEAD {
        return Err(SealError::Truncated);
    }
    let mut eph = [0u8; 32];
    eph.copy_from_slice(&sealed[..32]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[32..32 + NONCE_LEN]);
    let my_pub = me.user_id().x25519()?;
    let shared = me
        .x25519()
        .diffie_hellman(&x25519_dalek::PublicKey::from(eph));
    let key = derive_key(&shared, &eph, my_pub.as_bytes())?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &sealed[32 + NONCE_LEN..],
                aad,
            },
        )
        .map_err(|_| SealError::Unauthentic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(3);
        let bob = IdentityKey::generate(&mut rng);
        let eve = IdentityKey::generate(&mut rng);
        let sealed = seal(&mut rng, &bob.user_id(), b"secret", b"hdr").unwrap();
        assert_eq!(open(&bob, &sealed, b"hdr").unwrap(), b"secret");
        assert_eq!(open(&eve, &sealed, b"hdr"), Err(SealError::Unauthentic));
        assert_eq!(open(&bob, &sealed, b"hdx"), Err(SealError::Unauthentic));
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(
                open(&bob, &t, b"hdr").is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert_eq!(open(&bob, &sealed[..10], b"hdr"), Err(SealError::Truncated));
    }

    #[test]
    fn low_order_ephemeral_is_refused() {
        let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(4);
        let bob = IdentityKey::generate(&mut rng);
        let mut sealed = vec![0u8; OVERHEAD + 4]; // all-zero ephemeral key: a low-order point
        sealed[40] = 1;
        assert_eq!(open(&bob, &sealed, b""), Err(SealError::LowOrder));
    }
}
