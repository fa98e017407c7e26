//! The plaintext of a session message, as a modified client may write it.
#![no_main]
use hestia_protocol::envelope::Letter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = Letter::from_bytes(data) {
        // Whatever decodes keeps the sending limits.
        l.check().expect("from_bytes checks the limits");
    }
});
