//! Envelope bytes from a peer node or a device: decode, relay checks, then the recipient opening
//! the sealed-sender layer.
#![no_main]
use hestia_fuzz::{NOW, fixture};
use hestia_protocol::codec::{self, MAX_FRAME_BYTES};
use hestia_protocol::envelope::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = codec::decode::<Envelope>(data, MAX_FRAME_BYTES) {
        let _ = e.check_header(NOW);
        let _ = e.open_message(&fixture().bob);
        let _ = e.open_body(&fixture().bob);
    }
});
