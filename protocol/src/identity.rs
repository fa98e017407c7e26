//! Identities. Every user has one ed25519 identity key; its public half, [`UserId`], is the key
//! the user is known by. Its X25519 form (the standard birational map from Edwards to Montgomery
//! form) serves key agreement, so a user has one public key and one fingerprint.
//!
//! An [`Address`] is what a user hands out: their public key and the peer id of their home node,
//! as one printable string. It carries the whole key, not only its fingerprint, so adding a
//! contact needs no lookup that a node could answer falsely.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// Length of a public key and of a secret key seed, in bytes.
pub const KEY_LEN: usize = 32;
/// Longest node peer id we accept in an address (base58 of a multihash; ed25519 ids are 52).
pub const MAX_NODE_ID_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("not a valid ed25519 public key")]
    InvalidKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("malformed address {0:?}: expected <64 hex digits>@<node peer id>")]
    MalformedAddress(String),
    #[error("malformed contact card: {0}")]
    MalformedCard(&'static str),
}

/// A user's public identity key. Public, so `Debug` shows it; logs use [`crate::redact::User`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub [u8; KEY_LEN]);

impl UserId {
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidKey)
    }

    /// The X25519 public key for key agreement (birational map of the Edwards point).
    pub fn x25519(&self) -> Result<x25519_dalek::PublicKey, IdentityError> {
        let vk = self.verifying_key()?;
        Ok(x25519_dalek::PublicKey::from(vk.to_montgomery().to_bytes()))
    }

    /// Strict verification: refuses small-order keys and non-canonical signatures, for which
    /// the plain check accepts forgeries (the identity point "signs" every message).
    pub fn verify(&self, message: &[u8], signature: &Sig) -> Result<(), IdentityError> {
        let vk = self.verifying_key()?;
        if vk.is_weak() {
            return Err(IdentityError::InvalidKey);
        }
        vk.verify_strict(message, &signature.to_dalek())
            .map_err(|_| IdentityError::BadSignature)
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"hestia/fingerprint/v1");
        h.update(self.0);
        let d = h.finalize();
        let mut out = [0u8; 20];
        out.copy_from_slice(&d[..20]);
        Fingerprint(out)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, IdentityError> {
        let bytes = unhex(s).ok_or(IdentityError::InvalidKey)?;
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| IdentityError::InvalidKey)?;
        let id = UserId(arr);
        id.verifying_key()?;
        Ok(id)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", &self.to_hex()[..16])
    }
}

/// A detached ed25519 signature, as 64 raw bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sig {
    r: [u8; 32],
    s: [u8; 32],
}

impl Sig {
    /// The 64 raw bytes (R || S), as every ed25519 implementation writes them.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.r);
        b[32..].copy_from_slice(&self.s);
        b
    }

    pub fn from_bytes(b: &[u8; 64]) -> Self {
        Sig::from_dalek(&Signature::from_bytes(b))
    }

    fn from_dalek(sig: &Signature) -> Self {
        let b = sig.to_bytes();
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&b[..32]);
        s.copy_from_slice(&b[32..]);
        Sig { r, s }
    }

    fn to_dalek(self) -> Signature {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.r);
        b[32..].copy_from_slice(&self.s);
        Signature::from_bytes(&b)
    }
}

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({}…)", &hex(&self.r)[..8])
    }
}

/// A user's secret identity key. Zeroized on drop (by ed25519-dalek); no `Debug`, no `Display`.
pub struct IdentityKey {
    signing: SigningKey,
}

impl IdentityKey {
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        IdentityKey {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The secret seed, for the client's local store only.
    pub fn seed(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    pub fn user_id(&self) -> UserId {
        UserId(self.signing.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Sig {
        Sig::from_dalek(&self.signing.sign(message))
    }

    /// The X25519 secret matching [`UserId::x25519`].
    pub fn x25519(&self) -> x25519_dalek::StaticSecret {
        let scalar = Zeroizing::new(self.signing.to_scalar_bytes());
        x25519_dalek::StaticSecret::from(*scalar)
    }
}

/// The short, comparable form of a public key: 20 bytes of a domain-separated SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 20]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex(&self.0);
        for (i, chunk) in h.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A user's address: public key and home node peer id, printed as `<key hex>@<peer id>`.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Address {
    pub user: UserId,
    /// The home node's libp2p peer id in its base58 text form. The node crate checks that it
    /// parses as a peer id; this crate only bounds its length and alphabet.
    pub node: String,
}

impl Address {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let s = s.trim();
        let bad = || IdentityError::MalformedAddress(s.chars().take(200).collect());
        let (key, node) = s.split_once('@').ok_or_else(bad)?;
        let user = UserId::from_hex(key).map_err(|_| bad())?;
        if node.is_empty()
            || node.len() > MAX_NODE_ID_LEN
            || !node.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(bad());
        }
        Ok(Address {
            user,
            node: node.to_string(),
        })
    }

    /// A contact card: the address with a name and fingerprint, for pasting into a message or
    /// file. [`Address::parse_card`] reads it back and checks the fingerprint against the key.
    pub fn card(&self, name: &str) -> String {
        format!(
            "-----BEGIN HESTIA CONTACT-----\nname: {}\naddress: {}\nfingerprint: {}\n-----END HESTIA CONTACT-----\n",
            name.lines().next().unwrap_or(""),
            self,
            self.user.fingerprint()
        )
    }

    /// Reads a card made by [`Address::card`], or a bare address. Returns the suggested name.
    pub fn parse_card(text: &str) -> Result<(Address, Option<String>), IdentityError> {
        if !text.contains("BEGIN HESTIA CONTACT") {
            return Ok((Address::parse(text)?, None));
        }
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let addr = field("address:").ok_or(IdentityError::MalformedCard("no address line"))?;
        let addr = Address::parse(&addr)?;
        if let Some(fp) = field("fingerprint:")
            && fp != addr.user.fingerprint().to_string()
        {
            return Err(IdentityError::MalformedCard(
                "fingerprint does not match the key",
            ));
        }
        Ok((addr, field("name:").filter(|n| !n.is_empty())))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user.to_hex(), self.node)
    }
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand::rngs::StdRng {
        rand::SeedableRng::seed_from_u64(1)
    }

    #[test]
    fn x25519_forms_agree() {
        let mut r = rng();
        let a = IdentityKey::generate(&mut r);
        let b = IdentityKey::generate(&mut r);
        let ab = a.x25519().diffie_hellman(&b.user_id().x25519().unwrap());
        let ba = b.x25519().diffie_hellman(&a.user_id().x25519().unwrap());
        assert_eq!(ab.as_bytes(), ba.as_bytes());
    }

    #[test]
    fn a_small_order_key_verifies_nothing() {
        // The identity point, with R = identity and s = 0, passes the non-strict equation for
        // every message; registration once accepted it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let forged = Sig::from_bytes(&{
            let mut b = [0u8; 64];
            b[0] = 1;
            b
        });
        let weak = UserId(identity);
        assert!(weak.verify(b"register me", &forged).is_err());
    }

    #[test]
    fn sign_verify() {
        let k = IdentityKey::generate(&mut rng());
        let sig = k.sign(b"hello");
        assert!(k.user_id().verify(b"hello", &sig).is_ok());
        assert_eq!(
            k.user_id().verify(b"hellp", &sig),
            Err(IdentityError::BadSignature)
        );
    }

    #[test]
    fn address_and_card_round_trip() {
        let k = IdentityKey::generate(&mut rng());
        let a = Address {
            user: k.user_id(),
            node: "12D3KooWGzXw9PvnqVxGJrG4Z1oB2LBmFm3s2oHU1Fh6FhFj7y3e".into(),
        };
        assert_eq!(Address::parse(&a.to_string()).unwrap(), a);
        let (back, name) = Address::parse_card(&a.card("alice")).unwrap();
        assert_eq!(back, a);
        assert_eq!(name.as_deref(), Some("alice"));
        let tampered = a.card("alice").replace("fingerprint: ", "fingerprint: 0");
        assert!(Address::parse_card(&tampered).is_err());
        for bad in [
            "",
            "abc",
            "@node",
            "zz@node",
            &format!("{}@", k.user_id().to_hex()),
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
