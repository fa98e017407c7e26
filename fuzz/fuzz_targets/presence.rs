//! A presence announcement from the gossip topic.
#![no_main]
use hestia_fuzz::NOW;
use hestia_protocol::codec;
use hestia_protocol::wire::Presence;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = codec::decode::<Presence>(data, 4096) {
        let _ = p.is_fresh(NOW, Some(NOW - 1));
    }
});
