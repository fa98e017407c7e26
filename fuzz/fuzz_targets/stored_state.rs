//! A device's stored sessions and prekey secrets, read back from disk (which may be damaged).
#![no_main]
use hestia_protocol::session::prekeys::PrekeySecrets;
use hestia_protocol::session::ratchet::Session;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Session::from_stored(data) {
        let _ = Session::from_stored(&s.to_stored());
    }
    if let Ok(p) = PrekeySecrets::from_stored(data) {
        let _ = p.to_stored();
    }
});
