//! Prekeys: what a user publishes to their home node so others can start a session while the
//! user is offline, and the secret halves the user's device keeps.
//!
//! A user has one current signed prekey (an X25519 key signed by the identity key), rotated every
//! [`SIGNED_PREKEY_ROTATION_MS`], and a pool of one-time prekeys. The home node hands each
//! one-time prekey out at most once and reports when the pool runs low; the device then
//! replenishes it. A retired signed prekey stays usable for [`SIGNED_PREKEY_GRACE_MS`].

use super::{Secret32, SessionError, encode_curve25519};
use crate::envelope::MAX_TTL_MS;
use crate::identity::{IdentityKey, Sig, UserId};
use crate::{Millis, codec};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// How often the signed prekey is replaced. A week, as Signal does: a stolen signed prekey
/// secret exposes at most the sessions begun with it (and only those without a one-time prekey).
pub const SIGNED_PREKEY_ROTATION_MS: Millis = 7 * 24 * 3600 * 1000;
/// How long a retired signed prekey is kept. A sender may fetch the bundle just before rotation
/// and its first message may then wait in a mailbox for up to the longest envelope TTL; after
/// that no envelope naming the old key can still arrive. One extra day covers clock skew.
pub const SIGNED_PREKEY_GRACE_MS: Millis = MAX_TTL_MS + 24 * 3600 * 1000;
/// One-time prekeys a device keeps published.
pub const ONE_TIME_PREKEY_TARGET: usize = 100;
/// Below this many unused one-time prekeys the home node tells the device to replenish.
pub const ONE_TIME_PREKEY_LOW: usize = 25;
/// Most one-time prekeys a node keeps for one user (it refuses larger publications).
pub const MAX_ONE_TIME_PREKEYS: usize = 200;
/// Consumed one-time prekeys remembered, so a reuse is reported as a reuse, not as unknown.
pub const USED_ONE_TIME_REMEMBERED: usize = 1024;
/// Most one-time prekey secrets a device keeps. The home node hands out keys the device never
/// hears of again (the requester may never write), and a stranger can make it hand out many
/// (from fresh peer ids, within the node's per-user hourly bound); beyond this the oldest
/// secrets are dropped. 20 × the published pool: a key handed out is used within days or not
/// at all. (Each costs ~80 bytes stored, so the stored form stays far below the codec limit.)
pub const MAX_ONE_TIME_SECRETS: usize = 20 * ONE_TIME_PREKEY_TARGET;
/// How long an unused one-time prekey secret is kept: as long as a retired signed prekey, since
/// a first message naming it may wait in a mailbox for up to the longest TTL.
pub const ONE_TIME_SECRET_MAX_AGE_MS: Millis = SIGNED_PREKEY_GRACE_MS;
/// Stored-form version of [`PrekeySecrets`].
pub const PREKEYS_STORED_VERSION: u16 = 2;

/// A signed prekey as published: the X25519 public key and the identity key's ed25519 signature
/// over `Encode(key)` = `0x05 || key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekey {
    pub key: [u8; 32],
    pub signature: Sig,
}

impl SignedPrekey {
    pub fn verify(&self, identity: &UserId) -> Result<(), SessionError> {
        identity
            .verify(&encode_curve25519(&self.key), &self.signature)
            .map_err(|e| match e {
                crate::identity::IdentityError::InvalidKey => SessionError::BadIdentityKey,
                _ => SessionError::BadPrekeySignature,
            })
    }
}

/// What a node hands to someone who wants to start a session with one of its users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundle {
    pub identity: UserId,
    pub signed_prekey: SignedPrekey,
    /// One unused one-time prekey, or none if the pool is empty (X3DH then runs without DH4).
    pub one_time: Option<[u8; 32]>,
}

#[derive(Clone, Serialize, Deserialize)]
struct SignedPrekeySecret {
    public: SignedPrekey,
    secret: Secret32,
    created_at: Millis,
    /// When it stopped being current; `None` for the current key.
    retired_at: Option<Millis>,
}

#[derive(Clone, Serialize, Deserialize)]
struct OneTimeSecret {
    secret: Secret32,
    created_at: Millis,
}

/// The device's secret prekey state. Not `Debug`: it is all secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct PrekeySecrets {
    /// Newest (current) first.
    signed: Vec<SignedPrekeySecret>,
    one_time: BTreeMap<[u8; 32], OneTimeSecret>,
    used_one_time: VecDeque<[u8; 32]>,
}

/// Version 1's form: one-time secrets without their age. (Serialize only so the enum derives.)
#[derive(Serialize, Deserialize)]
struct PrekeySecretsV1 {
    signed: Vec<SignedPrekeySecret>,
    one_time: BTreeMap<[u8; 32], Secret32>,
    used_one_time: VecDeque<[u8; 32]>,
}

#[derive(Serialize, Deserialize)]
enum StoredPrekeys {
    V1(PrekeySecretsV1),
    V2(PrekeySecrets),
}

impl PrekeySecrets {
    pub fn new(rng: &mut impl CryptoRng, identity: &IdentityKey, now: Millis) -> Self {
        let mut s = PrekeySecrets {
            signed: Vec::new(),
            one_time: BTreeMap::new(),
            used_one_time: VecDeque::new(),
        };
        s.push_signed(rng, identity, now);
        s
    }

    fn push_signed(&mut self, rng: &mut impl CryptoRng, identity: &IdentityKey, now: Millis) {
        let secret = Secret32::random(rng);
        let key = secret.x25519_public();
        let signature = identity.sign(&encode_curve25519(&key));
        if let Some(cur) = self.signed.first_mut() {
            cur.retired_at = Some(now);
        }
        self.signed.insert(
            0,
            SignedPrekeySecret {
                public: SignedPrekey { key, signature },
                secret,
                created_at: now,
                retired_at: None,
            },
        );
    }

    /// The signed prekey to publish.
    pub fn current_signed(&self) -> &SignedPrekey {
        &self.signed[0].public
    }

    /// Rotates the signed prekey when it is due and forgets retired ones past their grace
    /// period. Returns true when a new signed prekey must be published.
    pub fn maintain(
        &mut self,
        rng: &mut impl CryptoRng,
        identity: &IdentityKey,
        now: Millis,
    ) -> bool {
        let rotated = if now.saturating_sub(self.signed[0].created_at) >= SIGNED_PREKEY_ROTATION_MS
        {
            self.push_signed(rng, identity, now);
            true
        } else {
            false
        };
        self.signed.retain(|k| match k.retired_at {
            None => true,
            Some(at) => now.saturating_sub(at) < SIGNED_PREKEY_GRACE_MS,
        });
        self.one_time
            .retain(|_, k| now.saturating_sub(k.created_at) < ONE_TIME_SECRET_MAX_AGE_MS);
        rotated
    }

    /// Signed prekeys still held (current and within grace).
    pub fn signed_count(&self) -> usize {
        self.signed.len()
    }

    /// Generates `n` one-time prekeys and returns their public halves for publication. Keeps
    /// at most [`MAX_ONE_TIME_SECRETS`], dropping the oldest (ones handed out long ago and
    /// never used).
    pub fn generate_one_time(
        &mut self,
        rng: &mut impl CryptoRng,
        n: usize,
        now: Millis,
    ) -> Vec<[u8; 32]> {
        let n = n.min(MAX_ONE_TIME_SECRETS);
        let fresh: Vec<[u8; 32]> = (0..n)
            .map(|_| {
                let secret = Secret32::random(rng);
                let public = secret.x25519_public();
                self.one_time.insert(
                    public,
                    OneTimeSecret {
                        secret,
                        created_at: now,
                    },
                );
                public
            })
            .collect();
        let excess = self.one_time.len().saturating_sub(MAX_ONE_TIME_SECRETS);
        if excess > 0 {
            let mut by_age: Vec<([u8; 32], Millis)> = self
                .one_time
                .iter()
                .filter(|(k, _)| !fresh.contains(k))
                .map(|(k, v)| (*k, v.created_at))
                .collect();
            by_age.sort_by_key(|(_, at)| *at);
            for (k, _) in by_age.into_iter().take(excess) {
                self.one_time.remove(&k);
            }
        }
        fresh
    }

    pub fn one_time_count(&self) -> usize {
        self.one_time.len()
    }

    pub(crate) fn signed_secret(&self, public: &[u8; 32]) -> Result<&Secret32, SessionError> {
        self.signed
            .iter()
            .find(|k| &k.public.key == public)
            .map(|k| &k.secret)
            .ok_or(SessionError::UnknownSignedPrekey)
    }

    pub(crate) fn one_time_secret(&self, public: &[u8; 32]) -> Result<&Secret32, SessionError> {
        match self.one_time.get(public) {
            Some(s) => Ok(&s.secret),
            None if self.used_one_time.contains(public) => Err(SessionError::OneTimePrekeyReused),
            None => Err(SessionError::UnknownOneTimePrekey),
        }
    }

    /// Deletes a one-time prekey after a session set up with it has decrypted its first message.
    pub fn consume_one_time(&mut self, public: &[u8; 32]) {
        if self.one_time.remove(public).is_some() {
            self.used_one_time.push_back(*public);
            while self.used_one_time.len() > USED_ONE_TIME_REMEMBERED {
                self.used_one_time.pop_front();
            }
        }
    }

    /// The versioned stored form. Fallible, though the bounds above keep it far below the
    /// codec's limit: a device must never panic on its own state.
    pub fn to_stored(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, SessionError> {
        // Serialising borrows; the enum needs an owned value, so clone (secrets zeroize on drop).
        codec::encode(&StoredPrekeys::V2(self.clone()))
            .map(zeroize::Zeroizing::new)
            .map_err(|_| SessionError::StoredTooLarge)
    }

    pub fn from_stored(bytes: &[u8]) -> Result<Self, SessionError> {
        match codec::decode::<StoredPrekeys>(bytes, codec::MAX_FRAME_BYTES) {
            Ok(StoredPrekeys::V2(s)) if !s.signed.is_empty() => Ok(s),
            // Version 1 kept no ages: count them from the current signed prekey's creation.
            Ok(StoredPrekeys::V1(v1)) if !v1.signed.is_empty() => {
                let created_at = v1.signed[0].created_at;
                Ok(PrekeySecrets {
                    one_time: v1
                        .one_time
                        .into_iter()
                        .map(|(k, secret)| (k, OneTimeSecret { secret, created_at }))
                        .collect(),
                    signed: v1.signed,
                    used_one_time: v1.used_one_time,
                })
            }
            _ => Err(SessionError::StoredCorrupt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rotation_keeps_old_key_for_grace_then_forgets_it() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let id = IdentityKey::generate(&mut rng);
        let mut p = PrekeySecrets::new(&mut rng, &id, 0);
        let first = p.current_signed().clone();
        first.verify(&id.user_id()).unwrap();
        assert!(!p.maintain(&mut rng, &id, SIGNED_PREKEY_ROTATION_MS - 1));
        assert!(p.maintain(&mut rng, &id, SIGNED_PREKEY_ROTATION_MS));
        assert_ne!(p.current_signed().key, first.key);
        assert!(
            p.signed_secret(&first.key).is_ok(),
            "old key usable within grace"
        );
        p.maintain(
            &mut rng,
            &id,
            SIGNED_PREKEY_ROTATION_MS + SIGNED_PREKEY_GRACE_MS,
        );
        assert_eq!(
            p.signed_secret(&first.key).err(),
            Some(SessionError::UnknownSignedPrekey)
        );
    }

    #[test]
    fn one_time_prekeys_are_single_use() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let id = IdentityKey::generate(&mut rng);
        let mut p = PrekeySecrets::new(&mut rng, &id, 0);
        let pubs = p.generate_one_time(&mut rng, 3, 0);
        assert_eq!(p.one_time_count(), 3);
        p.one_time_secret(&pubs[0]).unwrap();
        p.consume_one_time(&pubs[0]);
        assert_eq!(
            p.one_time_secret(&pubs[0]).err(),
            Some(SessionError::OneTimePrekeyReused)
        );
        assert_eq!(
            p.one_time_secret(&[9u8; 32]).err(),
            Some(SessionError::UnknownOneTimePrekey)
        );
        let back = PrekeySecrets::from_stored(&p.to_stored().unwrap()).unwrap();
        assert_eq!(back.one_time_count(), 2);
    }

    #[test]
    fn a_drained_pool_leaves_the_device_bounded_and_working() {
        // A stranger makes the home node hand out keys from many fresh peer ids; the device
        // tops the pool up every time it is told it is low. It never hears of those keys again.
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let id = IdentityKey::generate(&mut rng);
        let mut p = PrekeySecrets::new(&mut rng, &id, 0);
        let first = p.generate_one_time(&mut rng, ONE_TIME_PREKEY_TARGET, 0);
        let mut now = 0;
        for _ in 0..500 {
            now += 60_000;
            p.generate_one_time(&mut rng, ONE_TIME_PREKEY_TARGET - ONE_TIME_PREKEY_LOW, now);
            assert!(p.one_time_count() <= MAX_ONE_TIME_SECRETS);
        }
        let stored = p.to_stored().unwrap();
        assert!(
            stored.len() < codec::MAX_FRAME_BYTES / 8,
            "{} bytes",
            stored.len()
        );
        let mut back = PrekeySecrets::from_stored(&stored).unwrap();
        // The oldest went first; the newest are all there.
        assert_eq!(
            back.one_time_secret(&first[0]).err(),
            Some(SessionError::UnknownOneTimePrekey)
        );
        let newest = back.generate_one_time(&mut rng, 1, now)[0];
        back.one_time_secret(&newest).unwrap();
        // And age alone expires them.
        back.maintain(&mut rng, &id, now + ONE_TIME_SECRET_MAX_AGE_MS + 1);
        assert_eq!(back.one_time_count(), 0);
    }

    #[test]
    fn version_1_stored_form_still_loads() {
        #[derive(Serialize)]
        enum Out<'a> {
            V1 {
                signed: &'a Vec<SignedPrekeySecret>,
                one_time: BTreeMap<[u8; 32], Secret32>,
                used_one_time: &'a VecDeque<[u8; 32]>,
            },
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let id = IdentityKey::generate(&mut rng);
        let mut p = PrekeySecrets::new(&mut rng, &id, 77);
        let k = p.generate_one_time(&mut rng, 2, 77);
        let v1 = Out::V1 {
            signed: &p.signed,
            one_time: p
                .one_time
                .iter()
                .map(|(k, v)| (*k, v.secret.clone()))
                .collect(),
            used_one_time: &p.used_one_time,
        };
        let back = PrekeySecrets::from_stored(&codec::encode(&v1).unwrap()).unwrap();
        assert_eq!(back.one_time_count(), 2);
        assert_eq!(back.one_time[&k[0]].created_at, 77);
    }

    #[test]
    fn tampered_signature_is_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let id = IdentityKey::generate(&mut rng);
        let p = PrekeySecrets::new(&mut rng, &id, 0);
        let mut spk = p.current_signed().clone();
        spk.key[0] ^= 1;
        assert_eq!(
            spk.verify(&id.user_id()),
            Err(SessionError::BadPrekeySignature)
        );
    }
}
