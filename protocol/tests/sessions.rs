//! Sessions end to end through the public API: X3DH then the Double Ratchet with header
//! encryption. Property tests drive reordering, loss and duplication; the rest check tampering,
//! replay, bounds, forward secrecy and post-compromise security.

use hestia_protocol::identity::IdentityKey;
use hestia_protocol::session::SessionError;
use hestia_protocol::session::prekeys::{PrekeyBundle, PrekeySecrets};
use hestia_protocol::session::ratchet::{MAX_SKIP, RatchetMessage, Session};
use hestia_protocol::session::x3dh;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: u64 = 1_700_000_000_000;

/// Alice initiates with Bob's bundle; Bob responds on her first message. Returns both sessions
/// after that first message has been decrypted (so both can send).
fn pair(seed: u64) -> (StdRng, Session, Session) {
    let mut rng = StdRng::seed_from_u64(seed);
    let alice = IdentityKey::generate(&mut rng);
    let bob = IdentityKey::generate(&mut rng);
    let mut prekeys = PrekeySecrets::new(&mut rng, &bob, NOW);
    let otk = prekeys.generate_one_time(&mut rng, 1, 0)[0];
    let bundle = PrekeyBundle {
        identity: bob.user_id(),
        signed_prekey: prekeys.current_signed().clone(),
        one_time: Some(otk),
    };
    let (agreement, header) = x3dh::initiate(&mut rng, &alice, &bundle).unwrap();
    let mut a = Session::initiate(
        &mut rng,
        agreement,
        bob.user_id(),
        bundle.signed_prekey.key,
        header,
    )
    .unwrap();
    let first = a.encrypt(&mut rng, b"hello").unwrap();
    let header = first
        .prekey
        .clone()
        .expect("first message carries the X3DH header");
    let (agreement, spk) = x3dh::respond(&bob, &prekeys, &header).unwrap();
    let mut b = Session::respond(agreement, alice.user_id(), spk, header.ephemeral);
    assert_eq!(b.decrypt(&mut rng, &first, NOW).unwrap(), b"hello");
    prekeys.consume_one_time(&otk);
    assert_eq!(
        x3dh::respond(&bob, &prekeys, &header).err(),
        Some(SessionError::OneTimePrekeyReused)
    );
    (rng, a, b)
}

#[test]
fn conversation_both_ways_and_prekey_header_stops_after_reply() {
    let (mut rng, mut a, mut b) = pair(1);
    assert!(a.awaiting_reply());
    let m = a.encrypt(&mut rng, b"second").unwrap();
    assert!(m.prekey.is_some());
    assert_eq!(b.decrypt(&mut rng, &m, NOW).unwrap(), b"second");
    let r = b.encrypt(&mut rng, b"reply").unwrap();
    assert!(r.prekey.is_none());
    assert_eq!(a.decrypt(&mut rng, &r, NOW).unwrap(), b"reply");
    assert!(!a.awaiting_reply());
    for i in 0..5u8 {
        let m = a.encrypt(&mut rng, &[i; 10]).unwrap();
        assert!(m.prekey.is_none());
        assert_eq!(b.decrypt(&mut rng, &m, NOW).unwrap(), vec![i; 10]);
        let r = b.encrypt(&mut rng, &[i + 100; 3]).unwrap();
        assert_eq!(a.decrypt(&mut rng, &r, NOW).unwrap(), vec![i + 100; 3]);
    }
}

#[test]
fn headers_do_not_link_messages() {
    // Two messages of one chain share no header bytes a relay could match on.
    let (mut rng, mut a, _) = pair(2);
    let m1 = a.encrypt(&mut rng, b"x").unwrap();
    let m2 = a.encrypt(&mut rng, b"x").unwrap();
    let common = m1
        .header
        .windows(8)
        .filter(|w| m2.header.windows(8).any(|v| v == *w))
        .count();
    assert_eq!(common, 0);
}

#[test]
fn every_tampered_byte_fails_and_state_survives() {
    let (mut rng, mut a, mut b) = pair(3);
    let m = a.encrypt(&mut rng, b"tamper me").unwrap();
    let fields: [fn(&mut RatchetMessage) -> &mut Vec<u8>; 2] =
        [|m| &mut m.header, |m| &mut m.ciphertext];
    for field in fields {
        let len = field(&mut m.clone()).len();
        for i in 0..len {
            let mut bad = m.clone();
            field(&mut bad)[i] ^= 0x01;
            let err = b.decrypt(&mut rng, &bad, NOW).unwrap_err();
            assert!(
                matches!(
                    err,
                    SessionError::Unauthentic | SessionError::UnknownHeaderKey
                ),
                "byte {i}: {err:?}"
            );
        }
    }
    assert_eq!(b.decrypt(&mut rng, &m, NOW).unwrap(), b"tamper me");
}

#[test]
fn replays_are_rejected_in_and_out_of_order() {
    let (mut rng, mut a, mut b) = pair(4);
    let m1 = a.encrypt(&mut rng, b"1").unwrap();
    let m2 = a.encrypt(&mut rng, b"2").unwrap();
    b.decrypt(&mut rng, &m2, NOW).unwrap();
    assert_eq!(b.decrypt(&mut rng, &m2, NOW), Err(SessionError::Replay));
    b.decrypt(&mut rng, &m1, NOW).unwrap();
    assert_eq!(b.decrypt(&mut rng, &m1, NOW), Err(SessionError::Replay));
}

#[test]
fn gap_beyond_bound_is_refused_without_harm() {
    let (mut rng, mut a, mut b) = pair(5);
    let mut msgs = Vec::new();
    for i in 0..=MAX_SKIP + 1 {
        msgs.push(a.encrypt(&mut rng, &i.to_be_bytes()).unwrap());
    }
    let far = msgs.last().unwrap();
    assert_eq!(
        b.decrypt(&mut rng, far, NOW),
        Err(SessionError::GapTooLarge {
            gap: (MAX_SKIP + 1) as u64,
            max: MAX_SKIP
        })
    );
    assert_eq!(b.skipped_len(), 0, "a refused message stores nothing");
    // The session carries on: the next message in order decrypts, and so does one at the bound.
    assert_eq!(
        b.decrypt(&mut rng, &msgs[0], NOW).unwrap(),
        0u32.to_be_bytes()
    );
    let at_bound = &msgs[MAX_SKIP as usize];
    assert!(b.decrypt(&mut rng, at_bound, NOW).is_ok());
    assert_eq!(b.skipped_len(), MAX_SKIP as usize - 1);
}

#[test]
fn skipped_keys_expire() {
    let (mut rng, mut a, mut b) = pair(6);
    let m1 = a.encrypt(&mut rng, b"late").unwrap();
    let m2 = a.encrypt(&mut rng, b"early").unwrap();
    b.decrypt(&mut rng, &m2, NOW).unwrap();
    assert_eq!(b.skipped_len(), 1);
    b.expire_skipped(NOW + hestia_protocol::session::ratchet::SKIPPED_KEY_MAX_AGE_MS);
    assert_eq!(b.skipped_len(), 0);
    assert_eq!(b.decrypt(&mut rng, &m1, NOW), Err(SessionError::Replay));
}

#[test]
fn the_device_wide_bound_drops_the_oldest_skipped_keys_first() {
    use hestia_protocol::session::ratchet::bound_skipped_total;
    let (mut rng, mut a1, mut b1) = pair(12);
    let (_, mut a2, mut b2) = pair(13);
    // b1 skips 3 keys at NOW, b2 skips 3 keys later.
    let m1: Vec<_> = (0..4)
        .map(|_| a1.encrypt(&mut rng, b"x").unwrap())
        .collect();
    b1.decrypt(&mut rng, &m1[3], NOW).unwrap();
    let m2: Vec<_> = (0..4)
        .map(|_| a2.encrypt(&mut rng, b"y").unwrap())
        .collect();
    b2.decrypt(&mut rng, &m2[3], NOW + 10).unwrap();
    assert_eq!(bound_skipped_total(&mut [&mut b1, &mut b2], 4), 2);
    assert_eq!((b1.skipped_len(), b2.skipped_len()), (1, 3));
    // The survivors still decrypt; the dropped ones are gone.
    assert!(b1.decrypt(&mut rng, &m1[0], NOW).is_err());
    assert!(b1.decrypt(&mut rng, &m1[2], NOW).is_ok());
    for m in &m2[..3] {
        assert!(b2.decrypt(&mut rng, m, NOW).is_ok());
    }
}

#[test]
fn forward_secrecy_stored_state_cannot_read_the_past() {
    let (mut rng, mut a, mut b) = pair(7);
    let old = a.encrypt(&mut rng, b"secret from the past").unwrap();
    assert!(b.decrypt(&mut rng, &old, NOW).is_ok());
    // Both move on by a round trip.
    let r = b.encrypt(&mut rng, b"r").unwrap();
    a.decrypt(&mut rng, &r, NOW).unwrap();
    let n = a.encrypt(&mut rng, b"n").unwrap();
    b.decrypt(&mut rng, &n, NOW).unwrap();
    // An attacker who steals either side's stored state now cannot read the old message.
    for stolen in [b.to_stored(), a.to_stored()] {
        let mut s = Session::from_stored(&stolen).unwrap();
        assert!(s.decrypt(&mut rng, &old, NOW).is_err());
    }
}

#[test]
fn post_compromise_security_heals_after_one_round_trip() {
    let (mut rng, mut a, mut b) = pair(8);
    // The attacker copies Bob's whole state, including his current ratchet secret.
    let mut eve = Session::from_stored(&b.to_stored()).unwrap();
    // Bob writes under that ratchet key; Alice answers with a fresh one of hers, which the
    // attacker can still combine with the stolen key.
    let r1 = b.encrypt(&mut rng, b"r1").unwrap();
    a.decrypt(&mut rng, &r1, NOW).unwrap();
    let m2 = a.encrypt(&mut rng, b"still readable").unwrap();
    assert_eq!(eve.decrypt(&mut rng, &m2, NOW).unwrap(), b"still readable");
    b.decrypt(&mut rng, &m2, NOW).unwrap();
    // Bob's reply carries a ratchet key generated after the theft; once Alice has it, the
    // attacker's copy is left behind.
    let r2 = b.encrypt(&mut rng, b"r2").unwrap();
    a.decrypt(&mut rng, &r2, NOW).unwrap();
    let m3 = a.encrypt(&mut rng, b"healed").unwrap();
    assert!(eve.decrypt(&mut rng, &m3, NOW).is_err());
    assert_eq!(b.decrypt(&mut rng, &m3, NOW).unwrap(), b"healed");
}

#[test]
fn stored_form_round_trips_and_refuses_other_versions() {
    let (mut rng, mut a, mut b) = pair(9);
    let m1 = a.encrypt(&mut rng, b"1").unwrap();
    let m2 = a.encrypt(&mut rng, b"2").unwrap();
    b.decrypt(&mut rng, &m2, NOW).unwrap();
    let stored = b.to_stored();
    let mut back = Session::from_stored(&stored).unwrap();
    assert_eq!(back.decrypt(&mut rng, &m1, NOW).unwrap(), b"1");
    let mut v2 = stored.to_vec();
    v2[1] = 2;
    assert_eq!(
        Session::from_stored(&v2).err(),
        Some(SessionError::StoredVersion(2))
    );
    assert_eq!(
        Session::from_stored(&stored[..stored.len() - 3]).err(),
        Some(SessionError::StoredCorrupt)
    );
}

#[test]
fn debug_never_shows_key_material() {
    let (_, a, _) = pair(10);
    let dbg = format!("{a:?}");
    assert!(dbg.starts_with("Session {"), "{dbg}");
    assert!(!dbg.contains("rk") && !dbg.contains("Secret32"), "{dbg}");
    let secret = format!(
        "{:?}",
        hestia_protocol::session::Secret32::from_bytes([7; 32])
    );
    assert_eq!(secret, "Secret32(<redacted>)");
}

/// One step of a conversation script.
#[derive(Debug, Clone)]
enum Step {
    /// Alice (true) or Bob (false) writes this many messages.
    Send(bool, u8),
    /// Deliver the in-flight message at this index (mod len), towards Bob (true) or Alice.
    Deliver(bool, u8),
    /// Deliver an already delivered message again.
    Duplicate(bool, u8),
    /// Lose an in-flight message.
    Drop(bool, u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<bool>(), 1u8..6).prop_map(|(w, n)| Step::Send(w, n)),
        (any::<bool>(), any::<u8>()).prop_map(|(w, i)| Step::Deliver(w, i)),
        (any::<bool>(), any::<u8>()).prop_map(|(w, i)| Step::Duplicate(w, i)),
        (any::<bool>(), any::<u8>()).prop_map(|(w, i)| Step::Drop(w, i)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// Any interleaving of sending, reordered delivery, loss and duplication (gaps stay far
    /// inside MAX_SKIP here): every delivered message decrypts exactly once, to what was sent;
    /// every duplicate is refused; nothing else breaks.
    #[test]
    fn reorder_loss_duplication_decrypt_exactly_once(seed in any::<u64>(), script in prop::collection::vec(step(), 1..80)) {
        let (mut rng, mut a, mut b) = pair(seed);
        // In flight, per direction (0: to Bob, 1: to Alice): (payload, message).
        let mut flight: [Vec<(Vec<u8>, RatchetMessage)>; 2] = [Vec::new(), Vec::new()];
        let mut delivered: [Vec<RatchetMessage>; 2] = [Vec::new(), Vec::new()];
        let mut counter = 0u32;
        for s in script {
            match s {
                Step::Send(from_alice, n) => {
                    for _ in 0..n {
                        counter += 1;
                        let payload = counter.to_be_bytes().to_vec();
                        let (sender, dir) = if from_alice { (&mut a, 0) } else { (&mut b, 1) };
                        let m = sender.encrypt(&mut rng, &payload).unwrap();
                        flight[dir].push((payload, m));
                    }
                }
                Step::Deliver(to_bob, i) => {
                    let dir = if to_bob { 0 } else { 1 };
                    if flight[dir].is_empty() { continue; }
                    let n = flight[dir].len();
                    let (payload, m) = flight[dir].remove(i as usize % n);
                    let receiver = if to_bob { &mut b } else { &mut a };
                    prop_assert_eq!(receiver.decrypt(&mut rng, &m, NOW).unwrap(), payload);
                    delivered[dir].push(m);
                }
                Step::Duplicate(to_bob, i) => {
                    let dir = if to_bob { 0 } else { 1 };
                    if delivered[dir].is_empty() { continue; }
                    let m = delivered[dir][i as usize % delivered[dir].len()].clone();
                    let receiver = if to_bob { &mut b } else { &mut a };
                    let err = receiver.decrypt(&mut rng, &m, NOW).unwrap_err();
                    prop_assert!(matches!(err, SessionError::Replay | SessionError::UnknownHeaderKey), "{:?}", err);
                }
                Step::Drop(to_bob, i) => {
                    let dir = if to_bob { 0 } else { 1 };
                    if !flight[dir].is_empty() {
                        let n = flight[dir].len();
                        flight[dir].remove(i as usize % n);
                    }
                }
            }
        }
        // Whatever is still in flight decrypts now, newest first.
        for (dir, in_flight) in flight.iter_mut().enumerate() {
            let pending = std::mem::take(in_flight);
            for (payload, m) in pending.into_iter().rev() {
                let receiver = if dir == 0 { &mut b } else { &mut a };
                prop_assert_eq!(receiver.decrypt(&mut rng, &m, NOW).unwrap(), payload);
            }
        }
    }

    /// Outside the bound: a message too far ahead fails with a typed error, and the messages
    /// within the bound still decrypt afterwards.
    #[test]
    fn beyond_bound_fails_typed_and_breaks_nothing(seed in any::<u64>(), extra in 1u32..50) {
        let (mut rng, mut a, mut b) = pair(seed);
        let total = MAX_SKIP + extra + 1;
        let msgs: Vec<_> = (0..total).map(|i| a.encrypt(&mut rng, &i.to_be_bytes()).unwrap()).collect();
        let far = &msgs[(MAX_SKIP + extra) as usize];
        let is_gap_error = matches!(b.decrypt(&mut rng, far, NOW), Err(SessionError::GapTooLarge { .. }));
        prop_assert!(is_gap_error);
        for (i, m) in msgs.iter().enumerate().take(10) {
            prop_assert_eq!(b.decrypt(&mut rng, m, NOW).unwrap(), (i as u32).to_be_bytes().to_vec());
        }
    }
}
