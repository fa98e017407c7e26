//! The one wrapper through which user identities reach a log. A log line shows a short tag that
//! lets an operator correlate the lines of one run without recording who the user is.
//!
//! The tag is keyed by a secret drawn once per process (std's randomly keyed SipHash), so it
//! cannot be computed from a user id: a log that leaks does not say whether a known user was
//! there, and tags of two runs do not match.

use crate::identity::UserId;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// Displays a user id as `u:` and eight hex digits of a keyed hash of it.
pub struct User<'a>(pub &'a UserId);

fn key() -> &'static RandomState {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new)
}

impl fmt::Display for User<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut h = key().build_hasher();
        h.write(b"hestia/log-tag/v2");
        h.write(self.0.as_bytes());
        write!(f, "u:{:08x}", h.finish() as u32)
    }
}

impl fmt::Debug for User<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_in_a_process_and_not_the_unkeyed_hash() {
        let u = UserId([7; 32]);
        let a = User(&u).to_string();
        assert_eq!(a, User(&u).to_string());
        assert_ne!(a, User(&UserId([8; 32])).to_string());
        // Not the unsalted SHA-256 tag of earlier versions, which anyone could compute.
        use sha2::{Digest, Sha256};
        let d = Sha256::new()
            .chain_update(b"hestia/log-tag/v1")
            .chain_update(u.as_bytes())
            .finalize();
        assert_ne!(
            a,
            format!("u:{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
        );
    }
}
