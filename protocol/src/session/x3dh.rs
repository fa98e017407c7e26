//! X3DH (Signal's "Extended Triple Diffie-Hellman", revision 1) with Hestia's parameters:
//! curve X25519, hash SHA-256, info [`X3DH_INFO`], `Encode(PK)` = type byte || 32 key bytes.
//!
//! The identity key is the user's ed25519 key; its X25519 form (the birational map, with the
//! clamped SHA-512 scalar of the seed as private key) does the key agreement, as OMEMO 2 does.
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! SK  = HKDF-SHA256(salt = 32 zero bytes, ikm = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4],
//!                   info = X3DH_INFO, L = 32)
//! AD  = Encode(IK_A) || Encode(IK_B)          (ed25519 form, type byte 0xED)
//! ```

use super::prekeys::{PrekeyBundle, PrekeySecrets};
use super::{Secret32, SessionError, dh, encode_ed25519, hkdf};
use crate::identity::{IdentityKey, UserId};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The application info string of the X3DH KDF.
pub const X3DH_INFO: &[u8] = b"Hestia X3DH v1";

/// What the initiator sends with its first messages so the responder can run its half.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyHeader {
    pub identity: UserId,
    pub ephemeral: [u8; 32],
    pub signed_prekey: [u8; 32],
    pub one_time: Option<[u8; 32]>,
}

/// The result of the key agreement: the shared secret and the associated data every message of
/// the session binds.
pub struct Agreement {
    pub shared: Secret32,
    pub ad: Vec<u8>,
}

fn identity_x25519(id: &UserId) -> Result<[u8; 32], SessionError> {
    let vk = id
        .verifying_key()
        .map_err(|_| SessionError::BadIdentityKey)?;
    if vk.is_weak() {
        return Err(SessionError::BadIdentityKey);
    }
    Ok(vk.to_montgomery().to_bytes())
}

fn derive(dhs: &[&Secret32]) -> Secret32 {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    ikm.extend_from_slice(&[0xFF; 32]);
    for d in dhs {
        ikm.extend_from_slice(d.expose());
    }
    let mut sk = Secret32([0u8; 32]);
    hkdf(&[0u8; 32], &ikm, X3DH_INFO, &mut sk.0);
    sk
}

fn associated_data(initiator: &UserId, responder: &UserId) -> Vec<u8> {
    let mut ad = Vec::with_capacity(66);
    ad.extend_from_slice(&encode_ed25519(initiator.as_bytes()));
    ad.extend_from_slice(&encode_ed25519(responder.as_bytes()));
    ad
}

fn own_secret(me: &IdentityKey) -> Secret32 {
    Secret32(me.x25519().to_bytes())
}

/// The initiator's half: verify the bundle, agree on a secret, and produce the header to send.
pub fn initiate(
    rng: &mut impl CryptoRng,
    me: &IdentityKey,
    bundle: &PrekeyBundle,
) -> Result<(Agreement, PrekeyHeader), SessionError> {
    let ik_b = identity_x25519(&bundle.identity)?;
    bundle.signed_prekey.verify(&bundle.identity)?;
    let spk_b = bundle.signed_prekey.key;
    let ek = Secret32::random(rng);
    let ik_a = own_secret(me);
    let dh1 = dh(&ik_a, &spk_b)?;
    let dh2 = dh(&ek, &ik_b)?;
    let dh3 = dh(&ek, &spk_b)?;
    let shared = match &bundle.one_time {
        Some(opk) => derive(&[&dh1, &dh2, &dh3, &dh(&ek, opk)?]),
        None => derive(&[&dh1, &dh2, &dh3]),
    };
    let header = PrekeyHeader {
        identity: me.user_id(),
        ephemeral: ek.x25519_public(),
        signed_prekey: spk_b,
        one_time: bundle.one_time,
    };
    let ad = associated_data(&me.user_id(), &bundle.identity);
    Ok((Agreement { shared, ad }, header))
}

/// The responder's half. Returns the agreement and the signed prekey secret (the responder's
/// first ratchet key). Does not consume the one-time prekey: the caller does that with
/// [`PrekeySecrets::consume_one_time`] once the first message has decrypted, so a forged
/// header cannot burn prekeys.
pub fn respond(
    me: &IdentityKey,
    prekeys: &PrekeySecrets,
    header: &PrekeyHeader,
) -> Result<(Agreement, Secret32), SessionError> {
    let ik_a = identity_x25519(&header.identity)?;
    let spk = prekeys.signed_secret(&header.signed_prekey)?.clone();
    let ik_b = own_secret(me);
    let dh1 = dh(&spk, &ik_a)?;
    let dh2 = dh(&ik_b, &header.ephemeral)?;
    let dh3 = dh(&spk, &header.ephemeral)?;
    let shared = match &header.one_time {
        Some(opk) => {
            let opk_secret = prekeys.one_time_secret(opk)?;
            derive(&[&dh1, &dh2, &dh3, &dh(opk_secret, &header.ephemeral)?])
        }
        None => derive(&[&dh1, &dh2, &dh3]),
    };
    let ad = associated_data(&header.identity, &me.user_id());
    Ok((Agreement { shared, ad }, spk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn setup(seed: u64) -> (rand::rngs::StdRng, IdentityKey, IdentityKey, PrekeySecrets) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let alice = IdentityKey::generate(&mut rng);
        let bob = IdentityKey::generate(&mut rng);
        let pk = PrekeySecrets::new(&mut rng, &bob, 0);
        (rng, alice, bob, pk)
    }

    #[test]
    fn both_halves_agree_with_and_without_one_time_prekey() {
        let (mut rng, alice, bob, mut pk) = setup(1);
        let otk = pk.generate_one_time(&mut rng, 1, 0)[0];
        for one_time in [Some(otk), None] {
            let bundle = PrekeyBundle {
                identity: bob.user_id(),
                signed_prekey: pk.current_signed().clone(),
                one_time,
            };
            let (a, header) = initiate(&mut rng, &alice, &bundle).unwrap();
            let (b, _) = respond(&bob, &pk, &header).unwrap();
            assert_eq!(a.shared, b.shared);
            assert_eq!(a.ad, b.ad);
        }
    }

    #[test]
    fn refuses_bad_signature_low_order_and_unknown_keys() {
        let (mut rng, alice, bob, pk) = setup(2);
        let mut bundle = PrekeyBundle {
            identity: bob.user_id(),
            signed_prekey: pk.current_signed().clone(),
            one_time: None,
        };
        // A bundle signed by someone else.
        let mallory = IdentityKey::generate(&mut rng);
        let forged = PrekeySecrets::new(&mut rng, &mallory, 0);
        bundle.signed_prekey = forged.current_signed().clone();
        assert_eq!(
            initiate(&mut rng, &alice, &bundle).err(),
            Some(SessionError::BadPrekeySignature)
        );
        // A low-order one-time prekey (all zeros) is refused by the all-zero check.
        bundle.signed_prekey = pk.current_signed().clone();
        bundle.one_time = Some([0u8; 32]);
        assert_eq!(
            initiate(&mut rng, &alice, &bundle).err(),
            Some(SessionError::LowOrderPoint)
        );
        // A small-order identity key is refused before any DH.
        let mut weak = bundle.clone();
        weak.identity = UserId([0u8; 32]);
        weak.identity.0[0] = 1; // the identity point
        assert_eq!(
            initiate(&mut rng, &alice, &weak).err(),
            Some(SessionError::BadIdentityKey)
        );
        // Responder side: low-order ephemeral and unknown signed prekey.
        bundle.one_time = None;
        let (_, mut header) = initiate(&mut rng, &alice, &bundle).unwrap();
        let good = header.clone();
        header.ephemeral = [0u8; 32];
        assert_eq!(
            respond(&bob, &pk, &header).err(),
            Some(SessionError::LowOrderPoint)
        );
        header = good;
        header.signed_prekey = [7u8; 32];
        assert_eq!(
            respond(&bob, &pk, &header).err(),
            Some(SessionError::UnknownSignedPrekey)
        );
    }
}
