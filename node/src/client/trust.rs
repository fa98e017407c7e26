//! Who a message is from, as far as this device can tell. Pure: no IO.
//!
//! A contact *is* its key. The letter inside a session message says which node and name the
//! sender goes by, but the sender writes those fields and nothing proves them: names are not
//! unique on a node, and a modified client can claim any node. So a key that no contact has is
//! always a new contact, never a known contact "with a new key". When it writes under a name
//! that looks like a known contact's, it is still its own contact, marked as claiming that name,
//! and every message from it says so until the user decides: accept it as that contact's new
//! key (after comparing the safety number of the *new* key) or reject it.

use hestia_protocol::Millis;
use hestia_protocol::envelope::{Letter, valid_name};
use hestia_protocol::identity::{Address, UserId};
use hestia_store::client::{Contact, Origin, Trust};

/// What the contact list makes of a message's sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A contact with exactly this key.
    Known(Contact),
    /// A key no contact has: this new, unverified contact is to be stored. Its `claims` is set
    /// when the name it writes under looks like another contact's.
    New(Contact),
}

/// Decides who sent a letter under `sender`'s key. `contacts` is the whole contact list.
pub fn classify(contacts: &[Contact], sender: &UserId, letter: &Letter, now: Millis) -> Sender {
    if let Some(c) = contacts.iter().find(|c| c.address.user == *sender) {
        return Sender::Known(c.clone());
    }
    let claimed = if valid_name(&letter.sender_name) {
        letter.sender_name.as_str()
    } else {
        "unknown"
    };
    let clash = contacts.iter().find(|c| {
        looks_alike(&c.name, claimed)
            || c.handle.as_deref().is_some_and(|h| looks_alike(h, claimed))
    });
    let name = match clash {
        // Always qualified by the key, so it reads as a different contact.
        Some(_) => qualified(contacts, claimed, sender),
        None if contacts.iter().any(|c| c.name == claimed) => qualified(contacts, claimed, sender),
        None => claimed.to_string(),
    };
    Sender::New(Contact {
        name,
        handle: Some(claimed.to_string()),
        address: Address {
            user: *sender,
            node: letter.sender_node.clone(),
        },
        trust: Trust::Unverified,
        added_at: now,
        origin: Origin::Request,
        claims: clash.map(|c| c.name.clone()),
        reset_asked_at: None,
    })
}

/// `name-<first 8 hex digits of the key>`, longer if that is taken.
fn qualified(contacts: &[Contact], name: &str, key: &UserId) -> String {
    let hex = key.to_hex();
    [8, 16, 64]
        .iter()
        .map(|n| format!("{name}-{}", &hex[..*n]))
        .find(|q| !contacts.iter().any(|c| &c.name == q))
        .unwrap_or_else(|| format!("{name}-{hex}"))
}

/// Whether two names would pass for each other at a glance: the same letters ignoring case,
/// punctuation and the digits that look like letters (`B0b.` and `bob`). Names are ASCII only
/// (see [`valid_name`]), so this covers the look-alikes a name can hold.
pub fn looks_alike(a: &str, b: &str) -> bool {
    fn skeleton(s: &str) -> impl Iterator<Item = u8> + '_ {
        s.bytes()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| match c.to_ascii_lowercase() {
                b'0' => b'o',
                b'1' | b'i' => b'l',
                b'5' => b's',
                b'8' => b'b',
                c => c,
            })
    }
    let (mut x, mut y) = (skeleton(a).peekable(), skeleton(b).peekable());
    // Two names with no letters at all do not clash with each other by emptiness alone.
    if x.peek().is_none() || y.peek().is_none() {
        return a == b;
    }
    x.eq(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hestia_protocol::envelope::Content;

    fn contact(name: &str, key: u8) -> Contact {
        Contact {
            name: name.into(),
            handle: Some(name.into()),
            address: Address {
                user: UserId([key; 32]),
                node: "12D3KooWbob".into(),
            },
            trust: Trust::Verified,
            added_at: 0,
            origin: Origin::Added,
            claims: None,
            reset_asked_at: None,
        }
    }

    fn letter(name: &str, node: &str) -> Letter {
        Letter::new(node, name, Content::Text("hi".into()), 1).unwrap()
    }

    #[test]
    fn a_known_key_is_its_contact_whatever_the_letter_says() {
        let list = [contact("bob", 1), contact("carol", 2)];
        // Bob's key writing as "carol" from another node is still Bob.
        match classify(&list, &UserId([1; 32]), &letter("carol", "12D3KooWx"), 5) {
            Sender::Known(c) => assert_eq!(c.name, "bob"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_key_claiming_a_known_name_is_a_separate_contact() {
        // The takeover: Mallory registers "bob" (on Bob's node, or claims Bob's node).
        let list = [contact("bob", 1)];
        let mallory = UserId([9; 32]);
        let Sender::New(c) = classify(&list, &mallory, &letter("bob", "12D3KooWbob"), 5) else {
            panic!("Mallory must not be Bob");
        };
        assert_eq!(c.address.user, mallory);
        assert_eq!(c.name, format!("bob-{}", &mallory.to_hex()[..8]));
        assert_eq!(c.claims.as_deref(), Some("bob"));
        assert_eq!(c.trust, Trust::Unverified);
        // Look-alike spellings claim the same contact.
        for name in ["BOB", "b0b", "bo.b", "B0B_"] {
            let Sender::New(c) = classify(&list, &mallory, &letter(name, "12D3KooWx"), 5) else {
                panic!()
            };
            assert_eq!(c.claims.as_deref(), Some("bob"), "{name}");
        }
    }

    #[test]
    fn a_stranger_with_a_fresh_name_keeps_it() {
        let list = [contact("bob", 1)];
        let Sender::New(c) = classify(&list, &UserId([3; 32]), &letter("dave", "12D3KooWd"), 5)
        else {
            panic!()
        };
        assert_eq!((c.name.as_str(), c.claims), ("dave", None));
        assert_eq!(c.origin, Origin::Request);
    }

    #[test]
    fn qualified_names_do_not_collide() {
        let key = UserId([0xab; 32]);
        let taken = contact(&format!("bob-{}", &key.to_hex()[..8]), 7);
        let list = [contact("bob", 1), taken];
        let Sender::New(c) = classify(&list, &key, &letter("bob", "12D3KooWx"), 5) else {
            panic!()
        };
        assert_eq!(c.name, format!("bob-{}", &key.to_hex()[..16]));
    }

    #[test]
    fn look_alikes() {
        assert!(looks_alike("alice", "AL1CE"));
        assert!(looks_alike("bob", "b-o-b"));
        assert!(!looks_alike("bob", "rob"));
        assert!(!looks_alike("---", "..."));
        assert!(looks_alike("---", "---"));
    }
}
