//! At-rest encryption of a device's database under a passphrase.
//!
//! A random 32-byte data key encrypts every stored value (XChaCha20-Poly1305, a fresh random
//! nonce per write, the column family and stored key as associated data) and blinds every key
//! that names something (contact names, user ids, envelope and blob ids, settings) with a keyed
//! hash. Only message sequence numbers stay in clear, so history keeps its order. The data key
//! is wrapped under a key derived from the passphrase with Argon2id; the wrapped key, the salt
//! and the parameters sit in `meta` under `"vault"` ([`VaultRecord`]). Changing the passphrase
//! re-wraps the data key: nothing else is rewritten.

use crate::StoreError;
use crate::records::VaultRecord;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::Mac;
use rand::{CryptoRng, Rng};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The only vault record version so far.
pub const VAULT_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// The first byte of a sealed value, so a future format can be told apart.
const SEALED_V1: u8 = 1;
/// Bounds on parameters read back from disk, so a corrupt record cannot ask for 4 TiB.
const MAX_M_KIB: u32 = 4 * 1024 * 1024;
const MAX_T: u32 = 64;
const MAX_P: u32 = 16;

/// Argon2id's cost parameters, stored with the record that used them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option (64 MiB, 3 passes), with one lane: the derivation
    /// runs once per command, about a quarter of a second on one core.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };

    /// Cheap parameters for tests only: the format is the same.
    pub const TEST_ONLY: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    fn check(&self) -> Result<argon2::Params, StoreError> {
        if self.m_kib > MAX_M_KIB || self.t > MAX_T || self.p > MAX_P {
            return Err(corrupt("key derivation parameters out of bounds"));
        }
        argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| corrupt(&format!("key derivation parameters: {e}")))
    }
}

/// An unlocked vault: the keys derived from the data key. Zeroized on drop.
pub struct Vault {
    seal: Zeroizing<[u8; 32]>,
    blind: Zeroizing<[u8; 32]>,
    data_key: Zeroizing<[u8; 32]>,
}

fn corrupt(reason: &str) -> StoreError {
    StoreError::Corrupt {
        cf: crate::schema::META,
        reason: reason.into(),
    }
}

fn derive(data_key: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut m = <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(data_key).expect("any size");
    m.update(label);
    Zeroizing::new(m.finalize().into_bytes().into())
}

fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8; 16],
    kdf: &KdfParams,
) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let params = kdf.check()?;
    let mut out = Zeroizing::new([0u8; 32]);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| corrupt(&format!("key derivation: {e}")))?;
    Ok(out)
}

/// What the wrapped data key is bound to: the format and the parameters.
fn wrap_aad(kdf: &KdfParams) -> Vec<u8> {
    let mut aad = b"hestia vault v1".to_vec();
    for n in [kdf.m_kib, kdf.t, kdf.p] {
        aad.extend_from_slice(&n.to_be_bytes());
    }
    aad
}

impl Vault {
    fn from_data_key(data_key: Zeroizing<[u8; 32]>) -> Vault {
        Vault {
            seal: derive(&data_key, b"hestia vault values v1"),
            blind: derive(&data_key, b"hestia vault keys v1"),
            data_key,
        }
    }

    /// A new vault with a fresh data key, and its record wrapped under `passphrase`.
    pub fn create(
        rng: &mut impl CryptoRng,
        passphrase: &[u8],
        kdf: KdfParams,
    ) -> Result<(Vault, VaultRecord), StoreError> {
        let mut data_key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(data_key.as_mut());
        let vault = Vault::from_data_key(data_key);
        let record = vault.wrap(rng, passphrase, kdf)?;
        Ok((vault, record))
    }

    /// This vault's data key wrapped under another passphrase (a passphrase change).
    pub fn wrap(
        &self,
        rng: &mut impl CryptoRng,
        passphrase: &[u8],
        kdf: KdfParams,
    ) -> Result<VaultRecord, StoreError> {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let kek = passphrase_key(passphrase, &salt, &kdf)?;
        let wrapped = XChaCha20Poly1305::new((&*kek).into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: self.data_key.as_slice(),
                    aad: &wrap_aad(&kdf),
                },
            )
            .map_err(|_| corrupt("cannot wrap the data key"))?;
        Ok(VaultRecord {
            version: VAULT_VERSION,
            kdf,
            salt,
            nonce,
            wrapped,
        })
    }

    /// Unwraps the data key with `passphrase`: [`StoreError::WrongPassphrase`] if it does not
    /// open.
    pub fn unlock(record: &VaultRecord, passphrase: &[u8]) -> Result<Vault, StoreError> {
        if record.version != VAULT_VERSION {
            return Err(corrupt("unknown vault version"));
        }
        let kek = passphrase_key(passphrase, &record.salt, &record.kdf)?;
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new((&*kek).into())
                .decrypt(
                    &XNonce::from(record.nonce),
                    Payload {
                        msg: &record.wrapped,
                        aad: &wrap_aad(&record.kdf),
                    },
                )
                .map_err(|_| StoreError::WrongPassphrase)?,
        );
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("wrapped key has the wrong length"))?;
        Ok(Vault::from_data_key(Zeroizing::new(key)))
    }

    /// The stored form of a key in column family `cf`: a keyed hash (32 bytes), so a name, a
    /// user id or an envelope id cannot be read or even confirmed without the data key.
    pub fn blind_key(&self, cf: &str, key: &[u8]) -> Vec<u8> {
        let mut m = <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.blind.as_slice())
            .expect("any size");
        m.update(cf.as_bytes());
        m.update(&[0]);
        m.update(key);
        m.finalize().into_bytes().to_vec()
    }

    /// Seals `key` and `value` into the stored value under `stored_key`: the key travels
    /// inside, so a scan gets it back from a blinded key; the family and the stored key are
    /// bound in, so a value cannot be moved to another entry.
    pub fn seal(&self, cf: &str, stored_key: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut plain = Zeroizing::new(Vec::with_capacity(2 + key.len() + value.len()));
        let klen = u16::try_from(key.len()).expect("keys are short");
        plain.extend_from_slice(&klen.to_be_bytes());
        plain.extend_from_slice(key);
        plain.extend_from_slice(value);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = XChaCha20Poly1305::new((&*self.seal).into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(cf, stored_key),
                },
            )
            .expect("encryption of a bounded buffer does not fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a stored value: the entry's real key and value.
    #[allow(clippy::type_complexity)]
    pub fn open(
        &self,
        cf: &'static str,
        stored_key: &[u8],
        sealed: &[u8],
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), StoreError> {
        let bad = |reason: &str| StoreError::Corrupt {
            cf,
            reason: reason.into(),
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_V1 {
            return Err(bad("not a sealed value"));
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().expect("length");
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new((&*self.seal).into())
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: &sealed[1 + NONCE_LEN..],
                        aad: &aad(cf, stored_key),
                    },
                )
                .map_err(|_| bad("sealed value does not open (tampered or moved)"))?,
        );
        if plain.len() < 2 {
            return Err(bad("sealed value too short"));
        }
        let klen = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
        if plain.len() < 2 + klen {
            return Err(bad("sealed key too long"));
        }
        Ok((
            plain[2..2 + klen].to_vec(),
            Zeroizing::new(plain[2 + klen..].to_vec()),
        ))
    }
}

fn aad(cf: &str, stored_key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(cf.len() + 1 + stored_key.len());
    a.extend_from_slice(cf.as_bytes());
    a.push(0);
    a.extend_from_slice(stored_key);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_passphrase_is_refused_and_rewrap_keeps_the_data_key() {
        let rng = &mut rand::rng();
        let (v, rec) = Vault::create(rng, b"correct horse", KdfParams::TEST_ONLY).unwrap();
        assert!(matches!(
            Vault::unlock(&rec, b"wrong horse"),
            Err(StoreError::WrongPassphrase)
        ));
        let sealed = v.seal("cf", b"k", b"name", b"value");
        let v2 = Vault::unlock(&rec, b"correct horse").unwrap();
        let (k, val) = v2.open("cf", b"k", &sealed).unwrap();
        assert_eq!(
            (k.as_slice(), val.as_slice()),
            (&b"name"[..], &b"value"[..])
        );
        let rec2 = v2
            .wrap(rng, b"battery staple", KdfParams::TEST_ONLY)
            .unwrap();
        assert!(Vault::unlock(&rec2, b"correct horse").is_err());
        let v3 = Vault::unlock(&rec2, b"battery staple").unwrap();
        assert_eq!(v3.blind_key("cf", b"bob"), v.blind_key("cf", b"bob"));
        // A value moved to another key or family does not open.
        assert!(v3.open("cf", b"other", &sealed).is_err());
        assert!(v3.open("cg", b"k", &sealed).is_err());
        // Parameters raised on disk to exhaust memory are refused before deriving.
        let mut greedy = rec2.clone();
        greedy.kdf.m_kib = u32::MAX;
        assert!(matches!(
            Vault::unlock(&greedy, b"battery staple"),
            Err(StoreError::Corrupt { .. })
        ));
        // Parameters lowered on disk no longer open the wrapped key.
        let mut cheap = rec2;
        cheap.kdf.t = 2;
        assert!(Vault::unlock(&cheap, b"battery staple").is_err());
    }
}
