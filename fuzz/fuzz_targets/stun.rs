//! A datagram on a node's call relay, or one from it on a device: STUN and TURN messages.
#![no_main]
use hestia_protocol::stun::{Message, long_term_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        let key = long_term_key("u", "hestia", "p");
        let _ = m.check_integrity(data, &key);
        // What decodes encodes again and decodes to the same message.
        let again = m.encode(None);
        if let Ok(d) = Message::decode(&again) {
            let strip = |m: &Message| {
                m.attributes
                    .iter()
                    .filter(|a| {
                        !matches!(
                            a,
                            hestia_protocol::stun::Attribute::Integrity(_)
                                | hestia_protocol::stun::Attribute::Other(_)
                        )
                    })
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&m), strip(&d));
        }
    }
});
