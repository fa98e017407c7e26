//! The sealed box around every envelope body, opened by its recipient.
#![no_main]
use hestia_fuzz::fixture;
use hestia_protocol::seal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (aad, sealed) = data.split_at(data.len().min(8));
    let _ = seal::open(&fixture().bob, sealed, aad);
});
