//! Credentials for a home node's call relay (TURN, RFC 8656). A node hands its own
//! authenticated users short-lived credentials over `/hestia/client/1`; its relay checks them
//! without any state, from one node secret:
//!
//! - `username` = hex(`nonce (24) || XChaCha20-Poly1305(k_user, nonce, user id (32) ||
//!   expires_at (u64 BE ms))`) with `nonce` = HMAC-SHA256(k_siv, plaintext)[..24]: the relay learns whose allocation it is (for per-user bounds)
//!   and until when the credential opens new ones, and an observer of the UDP traffic learns
//!   neither.
//! - `password` = hex(HMAC-SHA256(k_pass, username)).
//! - Relay nonces: hex(`expires_at` u64 BE) || hex(HMAC-SHA256(k_nonce, client address ||
//!   expires_at)[..8]), fresh for [`NONCE_LIFETIME_MS`].
//!
//! with `k_user`, `k_pass`, `k_nonce`, `k_siv` = HMAC-SHA256(secret, label) for four fixed
//! labels.

use crate::Millis;
use crate::identity::UserId;
use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::Mac;
use sha2::Sha256;
use std::net::SocketAddr;
use zeroize::Zeroizing;

/// The realm every Hestia relay names.
pub const REALM: &str = "hestia";
/// How long a credential may open new allocations. A call that started goes on past it: its
/// allocation is refreshed under the key it was opened with.
pub const CREDENTIAL_LIFETIME_MS: Millis = 10 * 60 * 1000;
pub const NONCE_LIFETIME_MS: Millis = 10 * 60 * 1000;
const USERNAME_BYTES: usize = 24 + 32 + 8 + 16;

type HmacSha256 = hmac::Hmac<Sha256>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("not a credential this relay issued")]
    Unknown,
    #[error("the credential has expired")]
    Expired,
}

/// The keys a node's relay and its relay core derive from the node's relay secret.
pub struct TurnKeys {
    user: Zeroizing<[u8; 32]>,
    pass: Zeroizing<[u8; 32]>,
    nonce: Zeroizing<[u8; 32]>,
    siv: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for TurnKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnKeys(..)")
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as hmac::KeyInit>::new_from_slice(key).expect("any key size");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn addr_bytes(a: SocketAddr) -> Vec<u8> {
    let mut v = match a.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    v.extend_from_slice(&a.port().to_be_bytes());
    v
}

/// A credential for one user (what [`crate::wire::ClientResponse::Turn`] carries).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    pub expires_at: Millis,
}

impl TurnKeys {
    pub fn derive(secret: &[u8; 32]) -> TurnKeys {
        TurnKeys {
            user: Zeroizing::new(mac(secret, &[b"hestia/turn/username/v1"])),
            pass: Zeroizing::new(mac(secret, &[b"hestia/turn/password/v1"])),
            nonce: Zeroizing::new(mac(secret, &[b"hestia/turn/nonce/v1"])),
            siv: Zeroizing::new(mac(secret, &[b"hestia/turn/siv/v1"])),
        }
    }

    /// A credential for `user`, valid for [`CREDENTIAL_LIFETIME_MS`] from `now`. The AEAD
    /// nonce is synthetic (a MAC of the plaintext under its own key), so no randomness is
    /// needed and no two plaintexts share a nonce; the same user in the same millisecond gets
    /// the same credential.
    pub fn mint(&self, user: &UserId, now: Millis) -> Credential {
        let expires_at = now.saturating_add(CREDENTIAL_LIFETIME_MS);
        let mut plain = Zeroizing::new([0u8; 40]);
        plain[..32].copy_from_slice(user.as_bytes());
        plain[32..].copy_from_slice(&expires_at.to_be_bytes());
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&mac(&*self.siv, &[plain.as_slice()])[..24]);
        let cipher = XChaCha20Poly1305::new((&*self.user).into());
        let ct = cipher
            .encrypt(&XNonce::from(nonce), plain.as_slice())
            .expect("encryption of 40 bytes cannot fail");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ct);
        let username = hex(&raw);
        let password = self.password(&username);
        Credential {
            username,
            password,
            expires_at,
        }
    }

    /// The password that belongs to `username`.
    pub fn password(&self, username: &str) -> String {
        hex(&mac(&*self.pass, &[username.as_bytes()]))
    }

    /// Whose credential `username` is, and until when it opens allocations.
    pub fn open(&self, username: &str, now: Millis) -> Result<(UserId, Millis), CredentialError> {
        let raw = unhex(username)
            .filter(|r| r.len() == USERNAME_BYTES)
            .ok_or(CredentialError::Unknown)?;
        let nonce: [u8; 24] = raw[..24].try_into().expect("24 bytes");
        let cipher = XChaCha20Poly1305::new((&*self.user).into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(&XNonce::from(nonce), &raw[24..])
                .map_err(|_| CredentialError::Unknown)?,
        );
        let user = UserId(plain[..32].try_into().expect("32 bytes"));
        let expires_at = u64::from_be_bytes(plain[32..40].try_into().expect("8 bytes"));
        if now >= expires_at {
            return Err(CredentialError::Expired);
        }
        Ok((user, expires_at))
    }

    /// A nonce for the client at `client`, fresh for [`NONCE_LIFETIME_MS`].
    pub fn nonce(&self, client: SocketAddr, now: Millis) -> String {
        let until = now.saturating_add(NONCE_LIFETIME_MS);
        let tag = mac(&*self.nonce, &[&addr_bytes(client), &until.to_be_bytes()]);
        format!("{}{}", hex(&until.to_be_bytes()), hex(&tag[..8]))
    }

    /// Whether `nonce` is one [`TurnKeys::nonce`] made for `client` and is still fresh.
    pub fn nonce_fresh(&self, nonce: &str, client: SocketAddr, now: Millis) -> bool {
        let Some(raw) = unhex(nonce).filter(|r| r.len() == 16) else {
            return false;
        };
        let until = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let tag = mac(&*self.nonce, &[&addr_bytes(client), &until.to_be_bytes()]);
        let same = raw[8..]
            .iter()
            .zip(&tag[..8])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        same && now < until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_opens_to_its_user_until_it_expires_and_nothing_else_opens() {
        let keys = TurnKeys::derive(&[5; 32]);
        let alice = UserId([1; 32]);
        let c = keys.mint(&alice, 1_000);
        assert_eq!(c.expires_at, 1_000 + CREDENTIAL_LIFETIME_MS);
        assert_eq!(keys.open(&c.username, 2_000), Ok((alice, c.expires_at)));
        assert_eq!(keys.password(&c.username), c.password);
        assert!(
            !c.username.contains(&hex(&alice.0[..4])),
            "the id is hidden"
        );
        assert_eq!(
            keys.open(&c.username, c.expires_at),
            Err(CredentialError::Expired)
        );
        // Another node's credential, a changed byte, garbage: unknown.
        let other = TurnKeys::derive(&[6; 32]).mint(&alice, 1_000);
        assert_eq!(
            keys.open(&other.username, 2_000),
            Err(CredentialError::Unknown)
        );
        let mut flipped = c.username.clone().into_bytes();
        flipped[60] = if flipped[60] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(keys.open(&flipped, 2_000), Err(CredentialError::Unknown));
        for junk in ["", "zz", "é", &"0".repeat(160)] {
            assert_eq!(keys.open(junk, 2_000), Err(CredentialError::Unknown));
        }
    }

    #[test]
    fn a_nonce_is_fresh_for_its_client_only_and_only_for_a_while() {
        let keys = TurnKeys::derive(&[5; 32]);
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let n = keys.nonce(a, 10);
        assert!(keys.nonce_fresh(&n, a, 10 + NONCE_LIFETIME_MS - 1));
        assert!(!keys.nonce_fresh(&n, a, 10 + NONCE_LIFETIME_MS));
        assert!(!keys.nonce_fresh(&n, b, 10));
        assert!(!keys.nonce_fresh("00", a, 10));
        assert!(!keys.nonce_fresh(&n.replace('0', "1"), a, 10));
    }
}
