//! `/hestia/fed/1` requests and responses between nodes.
#![no_main]
use hestia_protocol::codec::{self, MAX_FRAME_BYTES};
use hestia_protocol::wire::{FedRequest, FedResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode::<FedRequest>(data, MAX_FRAME_BYTES);
    let _ = codec::decode::<FedResponse>(data, MAX_FRAME_BYTES);
});
