//! `/hestia/client/1` requests (to a node) and responses (to a device).
#![no_main]
use hestia_fuzz::NOW;
use hestia_protocol::codec::{self, MAX_FRAME_BYTES};
use hestia_protocol::wire::{Auth, ClientRequest, ClientResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = codec::decode::<ClientRequest>(data, MAX_FRAME_BYTES)
        && let Auth::Signed(a) = &r.auth
    {
        let _ = a.verify("12D3KooWnode", "12D3KooWpeer", NOW, &r.op);
    }
    let _ = codec::decode::<ClientResponse>(data, MAX_FRAME_BYTES);
});
