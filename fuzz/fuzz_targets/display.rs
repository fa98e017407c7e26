//! Foreign text on the way to a terminal: nothing unsafe survives either form.
#![no_main]
use hestia_protocol::display::{block, is_unsafe, line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    assert!(!line(s).chars().any(is_unsafe));
    assert!(!block(s).chars().any(|c| is_unsafe(c) && c != '\n'));
});
