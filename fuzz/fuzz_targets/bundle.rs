//! A prekey bundle from another node, used to start a session.
#![no_main]
use hestia_fuzz::{fixture, rng};
use hestia_protocol::codec::{self, MAX_FRAME_BYTES};
use hestia_protocol::session::prekeys::PrekeyBundle;
use hestia_protocol::session::x3dh;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = codec::decode::<PrekeyBundle>(data, MAX_FRAME_BYTES) {
        let _ = x3dh::initiate(&mut rng(), &fixture().alice, &b);
    }
});
