//! The Double Ratchet with header encryption (Signal's specification, revision 1, section 4),
//! with Hestia's parameters:
//!
//! ```text
//! KDF_RK_HE(rk, dh)  = HKDF-SHA256(salt = rk, ikm = dh, info = ROOT_INFO, L = 96)
//!                      -> rk' (32) || ck (32) || next header key (32)
//! KDF_CK(ck)         = ck' = HMAC-SHA256(ck, 0x02), mk = HMAC-SHA256(ck, 0x01)
//! header keys at set-up: HKDF-SHA256(salt = 32 zero bytes, ikm = SK, info = HEADER_KEYS_INFO,
//!                      L = 64) -> initiator's first sending header key || responder's next one
//! HENCRYPT(hk, h)    = nonce (24, random) || XChaCha20-Poly1305(hk, nonce, h, aad = AD)
//! header h           = DHs public (32) || PN (u32 BE) || N (u32 BE)
//! ENCRYPT(mk, m, ad) = XChaCha20-Poly1305(key = mk, nonce = 24 zero bytes, m,
//!                      aad = AD || encrypted header)
//! ```
//!
//! Each message key encrypts exactly one message, so a fixed nonce is safe; the specification
//! names this as one of its options ("fixed to a constant"), and it saves a KDF per message.
//!
//! The first 64 bytes of `KDF_RK_HE` are what a 64-byte HKDF with the same inputs gives (HKDF's
//! expand is prefix-consistent), so the root and chain keys equal those of the specification's
//! plain variant; the cross-check against the `doubleratchet` package relies on this.
//!
//! A relay sees only encrypted headers: nothing links two messages of one session.

use super::x3dh::{Agreement, PrekeyHeader};
use super::{Secret32, SessionError, dh, hkdf};
use crate::envelope::MAX_TTL_MS;
use crate::identity::UserId;
use crate::{Millis, codec};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::VecDeque;
use std::fmt;
use zeroize::Zeroizing;

/// Largest jump ahead within one chain that a message may make. Each skipped message key costs
/// one HMAC and 72 bytes stored; a peer that is really 1000 messages ahead of what arrived has
/// lost more than any mailbox loses, and a forged counter must not make us derive millions.
pub const MAX_SKIP: u32 = 1000;
/// Skipped message keys kept per session (oldest dropped first). Two full gaps: a burst lost in
/// one chain and the tail of the previous chain.
pub const MAX_SKIPPED_PER_SESSION: usize = 2 * MAX_SKIP as usize;
/// Skipped message keys kept on a device across all sessions; beyond it the oldest go first.
/// About 1.4 MiB of keys: enough for a hundred busy conversations with losses.
pub const MAX_SKIPPED_TOTAL: usize = 20_000;
/// How long a skipped message key is kept. A message cannot arrive later than its envelope
/// expires, and no envelope lives longer than [`MAX_TTL_MS`]; after that the key is only a risk.
pub const SKIPPED_KEY_MAX_AGE_MS: Millis = MAX_TTL_MS;

pub const ROOT_INFO: &[u8] = b"Hestia DR root v1";
pub const HEADER_KEYS_INFO: &[u8] = b"Hestia DR header keys v1";
pub const HEADER_LEN: usize = 40;
/// An encrypted header: nonce, header, tag.
pub const ENC_HEADER_LEN: usize = 24 + HEADER_LEN + 16;
/// Version of the stored session form written by [`Session::to_stored`].
pub const SESSION_STORED_VERSION: u16 = 1;

/// A ratchet header in the clear (only ever inside [`RatchetMessage::header`], encrypted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub dh: [u8; 32],
    pub pn: u32,
    pub n: u32,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..32].copy_from_slice(&self.dh);
        b[32..36].copy_from_slice(&self.pn.to_be_bytes());
        b[36..].copy_from_slice(&self.n.to_be_bytes());
        b
    }
    pub fn from_bytes(b: &[u8]) -> Option<Header> {
        if b.len() != HEADER_LEN {
            return None;
        }
        Some(Header {
            dh: b[..32].try_into().ok()?,
            pn: u32::from_be_bytes(b[32..36].try_into().ok()?),
            n: u32::from_be_bytes(b[36..].try_into().ok()?),
        })
    }
}

/// One Double Ratchet message as it travels (inside the sealed-sender layer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatchetMessage {
    /// Present on the initiator's messages until the responder has replied.
    pub prekey: Option<PrekeyHeader>,
    /// The encrypted header, [`ENC_HEADER_LEN`] bytes.
    #[serde(with = "crate::codec::bytes")]
    pub header: Vec<u8>,
    #[serde(with = "crate::codec::bytes")]
    pub ciphertext: Vec<u8>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Skipped {
    hk: Secret32,
    n: u32,
    mk: Secret32,
    stored_at: Millis,
}

/// One Double Ratchet session with one remote identity. Secrets zeroize on drop; `Debug` shows
/// only counters.
#[derive(Clone)]
pub struct Session {
    remote: UserId,
    ad: Vec<u8>,
    dhs: Secret32,
    dhs_pub: [u8; 32],
    dhr: Option<[u8; 32]>,
    rk: Secret32,
    cks: Option<Secret32>,
    ckr: Option<Secret32>,
    ns: u32,
    nr: u32,
    pn: u32,
    hks: Option<Secret32>,
    hkr: Option<Secret32>,
    nhks: Secret32,
    nhkr: Secret32,
    skipped: VecDeque<Skipped>,
    pending_prekey: Option<PrekeyHeader>,
    base_key: [u8; 32],
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote", &crate::redact::User(&self.remote))
            .field("ns", &self.ns)
            .field("nr", &self.nr)
            .field("pn", &self.pn)
            .field("skipped", &self.skipped.len())
            .field("awaiting_reply", &self.pending_prekey.is_some())
            .finish()
    }
}

fn initial_header_keys(sk: &Secret32) -> (Secret32, Secret32) {
    let mut out = Zeroizing::new([0u8; 64]);
    hkdf(&[0u8; 32], sk.expose(), HEADER_KEYS_INFO, out.as_mut());
    (split(&out[..32]), split(&out[32..]))
}

fn split(b: &[u8]) -> Secret32 {
    let mut s = Secret32([0u8; 32]);
    s.0.copy_from_slice(b);
    s
}

/// KDF_RK_HE: new root key, chain key, next header key.
fn kdf_rk(rk: &Secret32, dh_out: &Secret32) -> (Secret32, Secret32, Secret32) {
    let mut out = Zeroizing::new([0u8; 96]);
    hkdf(rk.expose(), dh_out.expose(), ROOT_INFO, out.as_mut());
    (split(&out[..32]), split(&out[32..64]), split(&out[64..]))
}

/// KDF_CK: next chain key = HMAC(ck, 0x02), message key = HMAC(ck, 0x01). The keyed HMAC state
/// is built once and cloned for the two inputs.
fn kdf_ck(ck: &Secret32) -> (Secret32, Secret32) {
    let keyed = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(ck.expose())
        .expect("HMAC takes any key length");
    let tag = |byte: u8| {
        let mut m = keyed.clone();
        m.update(&[byte]);
        let mut s = Secret32([0u8; 32]);
        s.0.copy_from_slice(&m.finalize().into_bytes());
        s
    };
    (tag(0x02), tag(0x01))
}

fn hencrypt(rng: &mut impl CryptoRng, hk: &Secret32, h: &Header, ad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let ct = XChaCha20Poly1305::new(hk.expose().into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &h.to_bytes(),
                aad: ad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any short input");
    let mut out = Vec::with_capacity(ENC_HEADER_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn hdecrypt(hk: &Secret32, enc: &[u8], ad: &[u8]) -> Option<Header> {
    let (nonce, ct) = enc.split_at_checked(24)?;
    let nonce: [u8; 24] = nonce.try_into().ok()?;
    let plain = XChaCha20Poly1305::new(hk.expose().into())
        .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: ad })
        .ok()?;
    Header::from_bytes(&plain)
}

/// The message AEAD: the one-use message key, and a fixed nonce.
fn message_cipher(mk: &Secret32) -> (XChaCha20Poly1305, XNonce) {
    (
        XChaCha20Poly1305::new(mk.expose().into()),
        XNonce::from([0u8; 24]),
    )
}

/// The message AEAD, exposed for the benchmark's "raw AEAD" baseline and the cross-check.
pub fn encrypt_with_message_key(mk: &Secret32, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let (c, n) = message_cipher(mk);
    c.encrypt(
        &n,
        Payload {
            msg: plaintext,
            aad,
        },
    )
    .expect("XChaCha20-Poly1305 encrypts any input that fits in memory")
}

fn decrypt_with_message_key(
    mk: &Secret32,
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, SessionError> {
    let (c, n) = message_cipher(mk);
    c.decrypt(
        &n,
        Payload {
            msg: ciphertext,
            aad,
        },
    )
    .map_err(|_| SessionError::Unauthentic)
}

enum SkippedLookup {
    Found(usize),
    /// The header opened under a retained header key but its message key is gone: a replay.
    Used,
    Missing,
}

impl Session {
    /// The initiator's session, right after X3DH: it can send at once.
    pub fn initiate(
        rng: &mut impl CryptoRng,
        agreement: Agreement,
        remote: UserId,
        their_signed_prekey: [u8; 32],
        prekey: PrekeyHeader,
    ) -> Result<Session, SessionError> {
        let (hka, nhkb) = initial_header_keys(&agreement.shared);
        let dhs = Secret32::random(rng);
        let (rk, cks, nhks) = kdf_rk(&agreement.shared, &dh(&dhs, &their_signed_prekey)?);
        Ok(Session {
            remote,
            ad: agreement.ad,
            dhs_pub: dhs.x25519_public(),
            dhs,
            dhr: Some(their_signed_prekey),
            rk,
            cks: Some(cks),
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            hks: Some(hka),
            hkr: None,
            nhks,
            nhkr: nhkb,
            skipped: VecDeque::new(),
            base_key: prekey.ephemeral,
            pending_prekey: Some(prekey),
        })
    }

    /// The responder's session, from its half of X3DH and its signed prekey secret (its first
    /// ratchet key). It must decrypt the initiator's message before it can send.
    pub fn respond(
        agreement: Agreement,
        remote: UserId,
        signed_prekey_secret: Secret32,
        base_key: [u8; 32],
    ) -> Session {
        let (hka, nhkb) = initial_header_keys(&agreement.shared);
        Session {
            remote,
            ad: agreement.ad,
            dhs_pub: signed_prekey_secret.x25519_public(),
            dhs: signed_prekey_secret,
            dhr: None,
            rk: agreement.shared,
            cks: None,
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            hks: None,
            hkr: None,
            nhks: nhkb,
            nhkr: hka,
            skipped: VecDeque::new(),
            pending_prekey: None,
            base_key,
        }
    }

    pub fn remote(&self) -> &UserId {
        &self.remote
    }

    /// The X3DH ephemeral key the session began with: a later prekey message naming it belongs
    /// to this session rather than starting a new one.
    pub fn base_key(&self) -> &[u8; 32] {
        &self.base_key
    }

    /// True while the initiator has not yet heard back (its messages carry the X3DH header).
    pub fn awaiting_reply(&self) -> bool {
        self.pending_prekey.is_some()
    }

    pub fn can_send(&self) -> bool {
        self.cks.is_some()
    }

    pub fn skipped_len(&self) -> usize {
        self.skipped.len()
    }

    /// Forgets skipped keys older than [`SKIPPED_KEY_MAX_AGE_MS`].
    pub fn expire_skipped(&mut self, now: Millis) {
        self.skipped
            .retain(|s| now.saturating_sub(s.stored_at) < SKIPPED_KEY_MAX_AGE_MS);
    }

    pub fn encrypt(
        &mut self,
        rng: &mut impl CryptoRng,
        plaintext: &[u8],
    ) -> Result<RatchetMessage, SessionError> {
        let (Some(cks), Some(hks)) = (&self.cks, &self.hks) else {
            return Err(SessionError::NotReadyToSend);
        };
        if self.ns == u32::MAX {
            return Err(SessionError::ChainExhausted);
        }
        let (next_ck, mk) = kdf_ck(cks);
        let header = Header {
            dh: self.dhs_pub,
            pn: self.pn,
            n: self.ns,
        };
        let enc_header = hencrypt(rng, hks, &header, &self.ad);
        let ciphertext = encrypt_with_message_key(&mk, plaintext, &self.aad(&enc_header));
        self.cks = Some(next_ck);
        self.ns += 1;
        Ok(RatchetMessage {
            prekey: self.pending_prekey.clone(),
            header: enc_header,
            ciphertext,
        })
    }

    fn aad(&self, enc_header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.ad.len() + enc_header.len());
        aad.extend_from_slice(&self.ad);
        aad.extend_from_slice(enc_header);
        aad
    }

    fn lookup_skipped(&self, enc_header: &[u8]) -> SkippedLookup {
        let mut opened_any = false;
        let mut last_tried: Option<&Secret32> = None;
        for s in &self.skipped {
            if last_tried == Some(&s.hk) {
                continue;
            }
            last_tried = Some(&s.hk);
            if let Some(h) = hdecrypt(&s.hk, enc_header, &self.ad) {
                opened_any = true;
                if let Some(i) = self.skipped.iter().position(|t| t.hk == s.hk && t.n == h.n) {
                    return SkippedLookup::Found(i);
                }
            }
        }
        if opened_any {
            SkippedLookup::Used
        } else {
            SkippedLookup::Missing
        }
    }

    /// Decrypts one message. On any error the session is left exactly as it was.
    pub fn decrypt(
        &mut self,
        rng: &mut impl CryptoRng,
        msg: &RatchetMessage,
        now: Millis,
    ) -> Result<Vec<u8>, SessionError> {
        if msg.header.len() != ENC_HEADER_LEN {
            return Err(SessionError::Malformed("encrypted header length"));
        }
        let aad = self.aad(&msg.header);
        let lookup = self.lookup_skipped(&msg.header);
        if let SkippedLookup::Found(i) = lookup {
            let plain = decrypt_with_message_key(&self.skipped[i].mk, &msg.ciphertext, &aad)?;
            self.skipped.remove(i);
            self.received(now);
            return Ok(plain);
        }
        if let (Some(hkr), Some(ckr)) = (&self.hkr, &self.ckr)
            && let Some(h) = hdecrypt(hkr, &msg.header, &self.ad)
        {
            if h.n < self.nr {
                return Err(SessionError::Replay);
            }
            if h.n == self.nr {
                // The common case: the next message of the current chain. No copy of the state.
                // The counter comes from the peer: checked before anything changes.
                let next_nr = self.nr.checked_add(1).ok_or(SessionError::ChainExhausted)?;
                let (next_ck, mk) = kdf_ck(ckr);
                let plain = decrypt_with_message_key(&mk, &msg.ciphertext, &aad)?;
                self.ckr = Some(next_ck);
                self.nr = next_nr;
                self.received(now);
                return Ok(plain);
            }
            let mut next = self.clone();
            next.skip_to(h.n, now)?;
            let plain = next.step_receive(&msg.ciphertext, &aad)?;
            *self = next;
            self.received(now);
            return Ok(plain);
        }
        if let Some(h) = hdecrypt(&self.nhkr, &msg.header, &self.ad) {
            let mut next = self.clone();
            next.skip_to(h.pn, now)?;
            next.dh_ratchet(rng, &h)?;
            next.skip_to(h.n, now)?;
            let plain = next.step_receive(&msg.ciphertext, &aad)?;
            *self = next;
            self.received(now);
            return Ok(plain);
        }
        match lookup {
            SkippedLookup::Used => Err(SessionError::Replay),
            _ => Err(SessionError::UnknownHeaderKey),
        }
    }

    fn received(&mut self, now: Millis) {
        self.pending_prekey = None;
        self.expire_skipped(now);
    }

    fn step_receive(&mut self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SessionError> {
        let ckr = self.ckr.as_ref().ok_or(SessionError::UnknownHeaderKey)?;
        let (next_ck, mk) = kdf_ck(ckr);
        let plain = decrypt_with_message_key(&mk, ciphertext, aad)?;
        self.ckr = Some(next_ck);
        self.nr = self.nr.checked_add(1).ok_or(SessionError::ChainExhausted)?;
        Ok(plain)
    }

    fn skip_to(&mut self, until: u32, now: Millis) -> Result<(), SessionError> {
        let (Some(hkr), Some(mut ck)) = (self.hkr.clone(), self.ckr.clone()) else {
            return Ok(());
        };
        if until <= self.nr {
            return Ok(());
        }
        let gap = until - self.nr;
        if gap > MAX_SKIP {
            return Err(SessionError::GapTooLarge {
                gap: gap as u64,
                max: MAX_SKIP,
            });
        }
        while self.nr < until {
            let (next_ck, mk) = kdf_ck(&ck);
            self.skipped.push_back(Skipped {
                hk: hkr.clone(),
                n: self.nr,
                mk,
                stored_at: now,
            });
            ck = next_ck;
            self.nr += 1;
        }
        self.ckr = Some(ck);
        while self.skipped.len() > MAX_SKIPPED_PER_SESSION {
            self.skipped.pop_front();
        }
        Ok(())
    }

    fn dh_ratchet(&mut self, rng: &mut impl CryptoRng, h: &Header) -> Result<(), SessionError> {
        self.pn = self.ns;
        self.ns = 0;
        self.nr = 0;
        self.hks = Some(self.nhks.clone());
        self.hkr = Some(self.nhkr.clone());
        self.dhr = Some(h.dh);
        let (rk, ckr, nhkr) = kdf_rk(&self.rk, &dh(&self.dhs, &h.dh)?);
        self.dhs = Secret32::random(rng);
        self.dhs_pub = self.dhs.x25519_public();
        let (rk, cks, nhks) = kdf_rk(&rk, &dh(&self.dhs, &h.dh)?);
        self.rk = rk;
        self.ckr = Some(ckr);
        self.cks = Some(cks);
        self.nhkr = nhkr;
        self.nhks = nhks;
        Ok(())
    }

    /// The versioned stored form: `version (u16 BE) || bincode(StoredSessionV1)`. Kept apart
    /// from the in-memory type so the two can change separately. The bytes are secret.
    pub fn to_stored(&self) -> Zeroizing<Vec<u8>> {
        let v1 = StoredSessionV1 {
            remote: self.remote,
            ad: self.ad.clone(),
            dhs: self.dhs.clone(),
            dhr: self.dhr,
            rk: self.rk.clone(),
            cks: self.cks.clone(),
            ckr: self.ckr.clone(),
            ns: self.ns,
            nr: self.nr,
            pn: self.pn,
            hks: self.hks.clone(),
            hkr: self.hkr.clone(),
            nhks: self.nhks.clone(),
            nhkr: self.nhkr.clone(),
            skipped: self.skipped.iter().cloned().collect(),
            pending_prekey: self.pending_prekey.clone(),
            base_key: self.base_key,
        };
        let body =
            Zeroizing::new(codec::encode(&v1).expect("a session is far below the frame limit"));
        let mut out = Zeroizing::new(Vec::with_capacity(2 + body.len()));
        out.extend_from_slice(&SESSION_STORED_VERSION.to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn from_stored(bytes: &[u8]) -> Result<Session, SessionError> {
        let (version, body) = bytes
            .split_at_checked(2)
            .ok_or(SessionError::StoredCorrupt)?;
        let version = u16::from_be_bytes([version[0], version[1]]);
        if version != SESSION_STORED_VERSION {
            return Err(SessionError::StoredVersion(version));
        }
        let v1: StoredSessionV1 =
            codec::decode(body, codec::MAX_FRAME_BYTES).map_err(|_| SessionError::StoredCorrupt)?;
        if v1.skipped.len() > MAX_SKIPPED_PER_SESSION {
            return Err(SessionError::StoredCorrupt);
        }
        Ok(Session {
            remote: v1.remote,
            ad: v1.ad.clone(),
            dhs_pub: v1.dhs.x25519_public(),
            dhs: v1.dhs.clone(),
            dhr: v1.dhr,
            rk: v1.rk.clone(),
            cks: v1.cks.clone(),
            ckr: v1.ckr.clone(),
            ns: v1.ns,
            nr: v1.nr,
            pn: v1.pn,
            hks: v1.hks.clone(),
            hkr: v1.hkr.clone(),
            nhks: v1.nhks.clone(),
            nhkr: v1.nhkr.clone(),
            skipped: v1.skipped.iter().cloned().collect(),
            pending_prekey: v1.pending_prekey.clone(),
            base_key: v1.base_key,
        })
    }
}

/// Keeps the skipped message keys across `sessions` within `max` (the device applies
/// [`MAX_SKIPPED_TOTAL`]), dropping the oldest first wherever they are. Returns how many it
/// dropped.
pub fn bound_skipped_total(sessions: &mut [&mut Session], max: usize) -> usize {
    let mut total: usize = sessions.iter().map(|s| s.skipped.len()).sum();
    let mut dropped = 0;
    while total > max {
        let Some(oldest) = sessions
            .iter_mut()
            .filter(|s| !s.skipped.is_empty())
            .min_by_key(|s| s.skipped.front().map(|k| k.stored_at))
        else {
            break;
        };
        oldest.skipped.pop_front();
        total -= 1;
        dropped += 1;
    }
    dropped
}

/// Stored form, version 1. Field order is the format; add a `StoredSessionV2` rather than
/// changing this one.
#[derive(Serialize, Deserialize)]
struct StoredSessionV1 {
    remote: UserId,
    ad: Vec<u8>,
    dhs: Secret32,
    dhr: Option<[u8; 32]>,
    rk: Secret32,
    cks: Option<Secret32>,
    ckr: Option<Secret32>,
    ns: u32,
    nr: u32,
    pn: u32,
    hks: Option<Secret32>,
    hkr: Option<Secret32>,
    nhks: Secret32,
    nhkr: Secret32,
    skipped: Vec<Skipped>,
    pending_prekey: Option<PrekeyHeader>,
    base_key: [u8; 32],
}
