//! The one wrapper through which user identities reach a log. A log line shows a short, salted
//! tag that lets an operator correlate lines of one run without recording who the user is.

use crate::identity::UserId;
use sha2::{Digest, Sha256};
use std::fmt;

/// Displays a user id as `u:` and four hex bytes of a domain-separated hash of it.
pub struct User<'a>(pub &'a UserId);

impl fmt::Display for User<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut h = Sha256::new();
        h.update(b"hestia/log-tag/v1");
        h.update(self.0.as_bytes());
        let d = h.finalize();
        write!(f, "u:{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
    }
}

impl fmt::Debug for User<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
