//! Every stored key and value of the node and client databases, read back from a disk that may
//! be damaged (`store::records::check`), and schema 2's contact form that the client's
//! migration reads. The first byte picks the column family, the next one the key's length.
#![no_main]
use hestia_protocol::codec::{self, MAX_FRAME_BYTES};
use hestia_store::records::{check, v2};
use hestia_store::schema::{CLIENT_CFS, NODE_CFS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [pick, key_len, rest @ ..] = data else {
        return;
    };
    let cfs: Vec<&str> = NODE_CFS.iter().chain(CLIENT_CFS).copied().collect();
    let cf = cfs[usize::from(*pick) % cfs.len()];
    let (key, value) = rest.split_at(usize::from(*key_len).min(rest.len()));
    let _ = check(cf, key, value);
    let _ = codec::decode::<v2::Contact>(value, MAX_FRAME_BYTES);
});
