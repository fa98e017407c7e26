//! Fetches held open (long polls), indexed for what the core asks of them: by token, by user
//! (a delivery wakes that user's oldest wait), by connection (a closed one drops its waits) and
//! by deadline (the next timeout, and which waits end empty). Every operation is a map lookup;
//! none scans the table, which holds one wait per connected device (up to
//! [`super::MAX_PARKED_FETCHES`]).

use super::{HashMap, Token};
use hestia_protocol::Millis;
use hestia_protocol::identity::UserId;
use std::collections::BTreeSet;

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
    by_token: HashMap<Token, Parked>,
    /// Each user's waits, oldest deadline first (at most `MAX_PARKED_PER_USER`).
    by_user: HashMap<UserId, BTreeSet<(Millis, Token)>>,
    by_peer: HashMap<String, Vec<Token>>,
    by_deadline: BTreeSet<(Millis, Token)>,
}

impl ParkedFetches {
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn of_user(&self, user: &UserId) -> usize {
        self.by_user.get(user).map_or(0, BTreeSet::len)
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    pub fn insert(&mut self, p: Parked) {
        let key = (p.until, p.token);
        self.by_user.entry(p.user).or_default().insert(key);
        self.by_peer
            .entry(p.client_peer.clone())
            .or_default()
            .push(p.token);
        self.by_deadline.insert(key);
        self.by_token.insert(p.token, p);
    }

    pub fn remove(&mut self, token: Token) -> Option<Parked> {
        let p = self.by_token.remove(&token)?;
        let key = (p.until, p.token);
        self.by_deadline.remove(&key);
        if let Some(set) = self.by_user.get_mut(&p.user) {
            set.remove(&key);
            if set.is_empty() {
                self.by_user.remove(&p.user);
            }
        }
        if let Some(tokens) = self.by_peer.get_mut(&p.client_peer) {
            tokens.retain(|t| *t != token);
            if tokens.is_empty() {
                self.by_peer.remove(&p.client_peer);
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
        let tokens = self.by_peer.remove(client_peer).unwrap_or_default();
        tokens.into_iter().filter_map(|t| self.remove(t)).collect()
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
