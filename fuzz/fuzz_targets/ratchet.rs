//! A ratchet message (encrypted header, ciphertext, maybe an X3DH header) given to an
//! established session, and to a fresh X3DH response, as a recipient would.
#![no_main]
use hestia_fuzz::{NOW, fixture, rng};
use hestia_protocol::codec::{self, MAX_FRAME_BYTES};
use hestia_protocol::session::ratchet::{RatchetMessage, Session};
use hestia_protocol::session::x3dh;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = codec::decode::<RatchetMessage>(data, MAX_FRAME_BYTES) else {
        return;
    };
    let f = fixture();
    let mut s: Session = f.bob_session.clone();
    let before = s.to_stored();
    if s.decrypt(&mut rng(), &m, NOW).is_err() {
        // A failure leaves the session as it was.
        assert_eq!(s.to_stored().as_slice(), before.as_slice());
    }
    if let Some(h) = &m.prekey {
        let _ = x3dh::respond(&f.bob, &f.bob_prekeys, h);
    }
});
