//! Fetches held open (long polls), indexed for what the core asks of them: by token, by user
//! (a delivery wakes that user's oldest wait), by connection (a closed one drops its waits) and
//! by deadline (the next timeout, and which waits end empty). Every operation is a map lookup;
//! none scans the table, which holds one wait per connected device (up to
//! [`super::MAX_PARKED_FETCHES`]).
//!
//! A wait is parked and ends on every idle device's every long poll, so the indexes allocate
//! nothing in the common case: a user's waits (at most [`super::MAX_PARKED_PER_USER`]) and a
//! connection's (usually one) are kept inline, and connections are indexed by a keyed hash of
//! their peer id, checked against the wait's own copy when a connection closes.

use super::{HashMap, MAX_PARKED_PER_USER, Token};
use hestia_protocol::Millis;
use hestia_protocol::identity::UserId;
use smallvec::SmallVec;
use std::collections::BTreeSet;
use std::hash::BuildHasher;

pub(super) struct Parked {
    pub token: Token,
    pub user: UserId,
    /// The connection it came on: dropped when that closes.
    pub client_peer: String,
    pub until: Millis,
    pub limit: usize,
}

#[derive(Default)]
pub(super) struct ParkedFetches {
    /// Each wait, with the hash of its connection's peer id (its key in `by_peer`).
    by_token: HashMap<Token, (Parked, u64)>,
    /// Each user's waits, oldest deadline first (at most `MAX_PARKED_PER_USER`).
    by_user: HashMap<UserId, SmallVec<[(Millis, Token); MAX_PARKED_PER_USER]>>,
    /// Each connection's waits, by the hash of its peer id (`peers`); a colliding connection's
    /// waits share an entry and are told apart by `Parked::client_peer`.
    by_peer: HashMap<u64, SmallVec<[Token; 1]>>,
    by_deadline: BTreeSet<(Millis, Token)>,
    peers: foldhash::fast::RandomState,
}

impl ParkedFetches {
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn of_user(&self, user: &UserId) -> usize {
        self.by_user.get(user).map_or(0, |w| w.len())
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    pub fn insert(&mut self, p: Parked) {
        let key = (p.until, p.token);
        let waits = self.by_user.entry(p.user).or_default();
        let at = waits.partition_point(|w| *w < key);
        waits.insert(at, key);
        let peer = self.peers.hash_one(p.client_peer.as_str());
        self.by_peer.entry(peer).or_default().push(p.token);
        self.by_deadline.insert(key);
        let replaced = self.by_token.insert(p.token, (p, peer));
        // Tokens are the driver's and unique; a reused one would leave a stale index.
        debug_assert!(replaced.is_none(), "a token parked twice");
    }

    pub fn remove(&mut self, token: Token) -> Option<Parked> {
        let (p, peer) = self.by_token.remove(&token)?;
        let key = (p.until, p.token);
        self.by_deadline.remove(&key);
        if let Some(waits) = self.by_user.get_mut(&p.user) {
            waits.retain(|w| *w != key);
            if waits.is_empty() {
                self.by_user.remove(&p.user);
            }
        }
        if let Some(tokens) = self.by_peer.get_mut(&peer) {
            tokens.retain(|t| *t != token);
            if tokens.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        Some(p)
    }

    /// The user's wait with the earliest deadline, taken out.
    pub fn take_oldest_of(&mut self, user: &UserId) -> Option<Parked> {
        let (_, token) = *self.by_user.get(user)?.first()?;
        self.remove(token)
    }

    /// Every wait of this connection, taken out.
    pub fn take_of_peer(&mut self, client_peer: &str) -> Vec<Parked> {
        let peer = self.peers.hash_one(client_peer);
        let Some(tokens) = self.by_peer.get(&peer) else {
            return Vec::new();
        };
        let mine: Vec<Token> = tokens
            .iter()
            .copied()
            .filter(|t| {
                self.by_token
                    .get(t)
                    .is_some_and(|(p, _)| p.client_peer == client_peer)
            })
            .collect();
        mine.into_iter().filter_map(|t| self.remove(t)).collect()
    }

    /// Every wait whose deadline is at or before `now`, earliest first, taken out.
    pub fn take_expired(&mut self, now: Millis) -> Vec<Parked> {
        let mut out = Vec::new();
        while let Some((at, token)) = self.by_deadline.first().copied() {
            if at > now {
                break;
            }
            out.extend(self.remove(token));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(token: u64, user: u8, peer: &str, until: Millis) -> Parked {
        Parked {
            token: Token(token),
            user: UserId([user; 32]),
            client_peer: peer.to_string(),
            until,
            limit: 1,
        }
    }

    #[test]
    fn every_index_forgets_a_wait_however_it_ends() {
        let mut p = ParkedFetches::default();
        p.insert(wait(1, 1, "a", 30));
        p.insert(wait(2, 1, "a", 10));
        p.insert(wait(3, 2, "b", 20));
        assert_eq!(p.of_user(&UserId([1; 32])), 2);
        assert_eq!(p.next_deadline(), Some(10));
        // The user's oldest wait is the earliest deadline, not the first parked.
        assert_eq!(p.take_oldest_of(&UserId([1; 32])).unwrap().token, Token(2));
        let expired: Vec<Token> = p.take_expired(20).iter().map(|w| w.token).collect();
        assert_eq!(expired, vec![Token(3)]);
        assert_eq!(p.of_user(&UserId([2; 32])), 0);
        let closed: Vec<Token> = p.take_of_peer("a").iter().map(|w| w.token).collect();
        assert_eq!(closed, vec![Token(1)]);
        assert_eq!(p.len(), 0);
        assert!(p.by_user.is_empty() && p.by_peer.is_empty() && p.by_deadline.is_empty());
    }

    #[test]
    fn a_closed_connection_takes_only_its_own_waits_even_when_peer_hashes_collide() {
        let mut p = ParkedFetches::default();
        p.insert(wait(1, 1, "a", 10));
        p.insert(wait(2, 2, "b", 10));
        // Force a collision: file b's wait under a's hash too, as a colliding peer would be.
        let ha = p.peers.hash_one("a");
        p.by_peer.get_mut(&ha).unwrap().push(Token(2));
        let closed: Vec<Token> = p.take_of_peer("a").iter().map(|w| w.token).collect();
        assert_eq!(closed, vec![Token(1)]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.take_of_peer("b").len(), 1);
    }
}
