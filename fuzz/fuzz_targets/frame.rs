//! The stream framing of both protocols (`protocol::frame`): a peer's bytes arriving in pieces
//! of any size. The first input byte picks the piece sizes; the rest is the stream.
#![no_main]
use hestia_protocol::frame::{FrameReader, LEN_BYTES};
use hestia_protocol::wire::{ClientRequest, ClientResponse, FedRequest, FedResponse};
use libfuzzer_sys::fuzz_target;

/// Small, so that lengths both under and over it are reachable with short inputs.
const MAX: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut r = FrameReader::new(MAX);
    let mut used = 0;
    while used < stream.len() && !r.is_complete() {
        let piece = &stream[used..(used + step).min(stream.len())];
        match r.push(piece) {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
            }
            Err(_) => {
                // Refused on its prefix: nothing of the body was taken.
                assert!(r.body().is_empty());
                return;
            }
        }
        // The buffer holds what arrived, never more than declared.
        assert_eq!(r.body().len() + LEN_BYTES.min(used), used);
        assert!(r.declared().is_none_or(|d| r.body().len() <= d && d <= MAX));
        // It takes no byte past its own frame.
        assert!(r.declared().is_none_or(|d| used <= LEN_BYTES + d));
    }
    if r.is_complete() {
        assert_eq!(used, LEN_BYTES + r.body().len());
        let _ = r.decode::<ClientRequest>();
        let _ = r.decode::<ClientResponse>();
        let _ = r.decode::<FedRequest>();
        let _ = r.decode::<FedResponse>();
    }
});
