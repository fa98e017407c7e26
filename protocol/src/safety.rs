//! Safety numbers: what two people compare to verify each other out of band, as Signal does.
//!
//! Each side's half is 30 digits derived from its identity key and its address:
//!
//! ```text
//! h_0 = SHA-512(version (2 bytes, BE) || key (32) || address (UTF-8))
//! h_i = SHA-512(h_{i-1} || key)            for i = 1 ..= ITERATIONS
//! half = for each of the first six 5-byte chunks c of h_ITERATIONS: (c as u40 BE) mod 100000,
//!        as five digits
//! ```
//!
//! The safety number is the two halves in ascending order, so both devices show the same 60
//! digits. Finding another key whose half equals a given one costs about
//! 2^100 work (a 100-bit half), each try costing [`ITERATIONS`] hashes.
//! The scannable form is [`SafetyNumber::code`]: `hestia-safety:1:` and the 60 digits.

use crate::identity::Address;
use sha2::{Digest, Sha512};
use std::fmt;

pub const VERSION: u16 = 1;
/// Hash iterations per half, as in Signal's numeric fingerprints.
pub const ITERATIONS: usize = 5200;
const CODE_PREFIX: &str = "hestia-safety:1:";

#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    digits: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SafetyError {
    #[error("not a Hestia safety code (expected {CODE_PREFIX}<60 digits>, or the 60 digits)")]
    Malformed,
    #[error("the codes differ: this is not the key you have for them; do not mark them verified")]
    Mismatch,
}

fn half(address: &Address) -> String {
    let key = address.user.as_bytes();
    let mut h = Sha512::new();
    h.update(VERSION.to_be_bytes());
    h.update(key);
    h.update(address.to_string().as_bytes());
    let mut d = h.finalize();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(d);
        h.update(key);
        d = h.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in d[..30].chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64);
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

impl SafetyNumber {
    pub fn new(mine: &Address, theirs: &Address) -> SafetyNumber {
        let (a, b) = (half(mine), half(theirs));
        let digits = if a <= b { a + &b } else { b + &a };
        SafetyNumber { digits }
    }

    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The text a QR code carries (or a person pastes).
    pub fn code(&self) -> String {
        format!("{CODE_PREFIX}{}", self.digits)
    }

    /// Checks a code scanned or pasted from the other device (the `code` form, or the digits
    /// with any spacing).
    pub fn check(&self, scanned: &str) -> Result<(), SafetyError> {
        let s = scanned.trim();
        let s = s.strip_prefix(CODE_PREFIX).unwrap_or(s);
        let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.len() != 60 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(SafetyError::Malformed);
        }
        if digits == self.digits {
            Ok(())
        } else {
            Err(SafetyError::Mismatch)
        }
    }
}

/// Twelve groups of five digits, four to a line.
impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.digits.as_bytes().chunks(5).enumerate() {
            if i > 0 {
                f.write_str(if i % 4 == 0 { "\n" } else { " " })?;
            }
            f.write_str(std::str::from_utf8(group).expect("ASCII digits"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.digits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKey;
    use rand::SeedableRng;

    fn addr(rng: &mut rand::rngs::StdRng, node: &str) -> Address {
        Address {
            user: IdentityKey::generate(rng).user_id(),
            node: node.into(),
        }
    }

    #[test]
    fn both_sides_see_the_same_number_and_a_new_key_changes_it() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (a, b) = (addr(&mut rng, "nodeA"), addr(&mut rng, "nodeB"));
        let ab = SafetyNumber::new(&a, &b);
        let ba = SafetyNumber::new(&b, &a);
        assert_eq!(ab, ba);
        assert_eq!(ab.digits().len(), 60);
        assert_eq!(ab.to_string().lines().count(), 3);
        let mallory = addr(&mut rng, "nodeB");
        assert_ne!(SafetyNumber::new(&a, &mallory), ab);
        let moved = Address {
            user: b.user,
            node: "nodeC".into(),
        };
        assert_ne!(SafetyNumber::new(&a, &moved), ab);
    }

    #[test]
    fn scanned_or_pasted_codes_are_checked() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let (a, b) = (addr(&mut rng, "n1"), addr(&mut rng, "n2"));
        let sn = SafetyNumber::new(&a, &b);
        assert_eq!(sn.check(&SafetyNumber::new(&b, &a).code()), Ok(()));
        assert_eq!(sn.check(&sn.to_string()), Ok(()));
        let other = SafetyNumber::new(&a, &addr(&mut rng, "n2"));
        assert_eq!(sn.check(&other.code()), Err(SafetyError::Mismatch));
        assert_eq!(sn.check("hello"), Err(SafetyError::Malformed));
    }
}
