//! Fixtures the fuzz targets share: fixed keys and an established session, made once from a
//! fixed seed, so every input is judged against the same state.

use hestia_protocol::identity::IdentityKey;
use hestia_protocol::session::prekeys::{PrekeyBundle, PrekeySecrets};
use hestia_protocol::session::ratchet::{RatchetMessage, Session};
use hestia_protocol::session::x3dh;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::OnceLock;

pub const NOW: u64 = 1_700_000_000_000;

pub fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

pub struct Fixture {
    pub alice: IdentityKey,
    pub bob: IdentityKey,
    pub bob_prekeys: PrekeySecrets,
    /// Alice's and Bob's sessions after one message each way.
    pub alice_session: Session,
    pub bob_session: Session,
    /// Real messages: Alice's first (with its X3DH header) and a later one in the chain.
    pub first: RatchetMessage,
    pub later: RatchetMessage,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rng = &mut rng();
        let alice = IdentityKey::generate(rng);
        let bob = IdentityKey::generate(rng);
        let mut bob_prekeys = PrekeySecrets::new(rng, &bob, NOW);
        let otk = bob_prekeys.generate_one_time(rng, 1, NOW)[0];
        let bundle = PrekeyBundle {
            identity: bob.user_id(),
            signed_prekey: bob_prekeys.current_signed().clone(),
            one_time: Some(otk),
        };
        let (agreement, header) = x3dh::initiate(rng, &alice, &bundle).expect("fixture");
        let mut a = Session::initiate(
            rng,
            agreement,
            bob.user_id(),
            bundle.signed_prekey.key,
            header,
        )
        .expect("fixture");
        let first = a.encrypt(rng, b"hello").expect("fixture");
        let h = first.prekey.clone().expect("fixture");
        let (agreement, spk) = x3dh::respond(&bob, &bob_prekeys, &h).expect("fixture");
        let mut b = Session::respond(agreement, alice.user_id(), spk, h.ephemeral);
        b.decrypt(rng, &first, NOW).expect("fixture");
        let reply = b.encrypt(rng, b"hi").expect("fixture");
        a.decrypt(rng, &reply, NOW).expect("fixture");
        let later = a.encrypt(rng, b"later").expect("fixture");
        Fixture {
            alice,
            bob,
            bob_prekeys,
            alice_session: a,
            bob_session: b,
            first,
            later,
        }
    })
}
