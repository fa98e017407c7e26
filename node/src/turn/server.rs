//! The node's call relay: a TURN server (RFC 8656, UDP, Send and Data indications) as a
//! sans-IO state machine. It takes `now`, datagrams from clients and from peers, and the
//! sockets the driver bound for it; it gives back datagrams to send, sockets to bind and
//! sockets to close, and its next timeout.
//!
//! Only this node's users can allocate: an allocation needs a credential the relay core
//! minted for an authenticated session (`hestia_protocol::turn`). Everything is bounded:
//! allocations in all and per user, permissions per allocation, bytes per second per user,
//! and the unauthenticated challenges the relay answers per second (so it amplifies no flood
//! toward a forged source address).

use super::Bytes;
use hestia_protocol::Millis;
use hestia_protocol::identity::UserId;
use hestia_protocol::push::address_allowed;
use hestia_protocol::stun::{Attribute, Class, Message, Method, code, long_term_key};
use hestia_protocol::turn::{REALM, TurnKeys};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// Allocation lifetime when the client asks for none, and the most it may ask for.
pub const DEFAULT_LIFETIME_S: u32 = 600;
pub const MAX_LIFETIME_S: u32 = 3600;
/// A permission lasts this long unless refreshed (RFC 8656: 300 s).
pub const PERMISSION_LIFETIME_MS: Millis = 300_000;
/// Peers one allocation may have permissions for: a call needs one or two.
pub const MAX_PERMISSIONS: usize = 8;
/// Unauthenticated requests answered (with a 401 challenge) per second, from everyone.
pub const CHALLENGES_PER_SECOND: u64 = 200;
/// Outputs queued at once; beyond it datagrams are dropped (UDP may lose them anyway).
const MAX_QUEUED_OUTPUTS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnSettings {
    /// Allocations at once, in all and per user.
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Bytes relayed per second for one user, both directions together; bursts of twice it.
    pub user_bytes_per_second: u64,
    /// Let peers be loopback addresses (for tests on one machine). Private, link-local and
    /// other non-public peers are refused always: a caller must not turn the node's relay
    /// into a probe of the network it sits in.
    pub allow_loopback_peers: bool,
}

impl Default for TurnSettings {
    fn default() -> TurnSettings {
        TurnSettings {
            max_allocations: 256,
            max_allocations_per_user: 4,
            // 64 KiB/s: Opus voice with its headers is 6-8 KiB/s each way.
            user_bytes_per_second: 64 * 1024,
            allow_loopback_peers: false,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TurnOutput {
    /// A datagram from the relay's listening socket to a client.
    ToClient { to: SocketAddr, bytes: Bytes },
    /// A datagram from the allocation's relay socket to a peer.
    ToPeer {
        relay: SocketAddr,
        to: SocketAddr,
        bytes: Bytes,
    },
    /// Bind a UDP socket on the relay address for `client`'s new allocation, then call
    /// [`TurnServer::handle_bound`].
    Bind { client: SocketAddr },
    /// The allocation on `relay` ended: close its socket.
    Release { relay: SocketAddr },
}

/// Counts for the operator and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnStats {
    pub allocations: usize,
    pub relayed_bytes: u64,
    /// Datagrams dropped: no permission, over a user's rate, or malformed.
    pub dropped: u64,
    pub refused_requests: u64,
}

struct Allocation {
    user: UserId,
    username: String,
    key: [u8; 32],
    /// The Allocate request's transaction id, to answer its retransmissions alike.
    txid: [u8; 12],
    /// `None` until the driver bound its socket.
    relay: Option<SocketAddr>,
    expires: Millis,
    permissions: HashMap<IpAddr, Millis>,
}

struct Usage {
    allocations: usize,
    /// Bytes allowance left (≤ 2 s worth) and when it was last topped up.
    left: u64,
    at: Millis,
}

pub struct TurnServer {
    settings: TurnSettings,
    keys: std::sync::Arc<TurnKeys>,
    allocations: HashMap<SocketAddr, Allocation>,
    by_relay: HashMap<SocketAddr, SocketAddr>,
    usage: HashMap<UserId, Usage>,
    challenges: (u64, Millis),
    outputs: VecDeque<TurnOutput>,
    stats: TurnStats,
    indications: u64,
}

impl TurnServer {
    /// `keys` are the ones the relay core mints credentials with (shared, derived once).
    pub fn new(settings: TurnSettings, keys: impl Into<std::sync::Arc<TurnKeys>>) -> TurnServer {
        TurnServer {
            settings,
            keys: keys.into(),
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            usage: HashMap::new(),
            challenges: (CHALLENGES_PER_SECOND, 0),
            outputs: VecDeque::new(),
            stats: TurnStats::default(),
            indications: 0,
        }
    }

    pub fn stats(&self) -> TurnStats {
        TurnStats {
            allocations: self.allocations.len(),
            ..self.stats
        }
    }

    pub fn poll_output(&mut self) -> Option<TurnOutput> {
        self.outputs.pop_front()
    }

    /// When the next allocation lapses. Permissions need no timer: each is checked against
    /// `now` where it is used, and lapsed ones are pruned whenever this timer runs.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.allocations.values().map(|a| a.expires).min()
    }

    pub fn handle_timeout(&mut self, now: Millis) {
        let lapsed: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for client in lapsed {
            self.remove(&client);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, until| *until > now);
        }
    }

    /// A datagram on the relay's listening socket from `from`.
    pub fn handle_client(&mut self, now: Millis, from: SocketAddr, bytes: &[u8]) {
        let Ok(msg) = Message::decode(bytes) else {
            self.stats.dropped += 1;
            return;
        };
        match (msg.class, msg.method) {
            (Class::Indication, Method::Send) => self.on_send(now, from, &msg),
            (Class::Request, Method::Allocate) => self.on_allocate(now, from, &msg, bytes),
            (Class::Request, Method::Refresh) => self.on_refresh(now, from, &msg, bytes),
            (Class::Request, Method::CreatePermission) => {
                self.on_permission(now, from, &msg, bytes)
            }
            (Class::Request, _) => self.refuse(from, &msg, code::BAD_REQUEST, None),
            _ => self.stats.dropped += 1,
        }
    }

    /// A datagram from `from` on the relay socket `relay`.
    pub fn handle_peer(&mut self, now: Millis, relay: SocketAddr, from: SocketAddr, bytes: &[u8]) {
        let Some(client) = self.by_relay.get(&relay).copied() else {
            return;
        };
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        let permitted = a.permissions.get(&from.ip()).is_some_and(|t| *t > now);
        let user = a.user;
        if !permitted || !self.spend(&user, now, bytes.len()) {
            self.stats.dropped += 1;
            return;
        }
        self.indications += 1;
        let txid = indication_txid(self.indications);
        let data = Message::new(Class::Indication, Method::Data, txid)
            .with(Attribute::XorPeerAddress(from))
            .with(Attribute::Data(bytes.to_vec()))
            .encode(None);
        self.stats.relayed_bytes += bytes.len() as u64;
        self.push(TurnOutput::ToClient {
            to: client,
            bytes: data,
        });
    }

    /// The socket the driver bound for `client`'s allocation, or why it could not.
    pub fn handle_bound(
        &mut self,
        now: Millis,
        client: SocketAddr,
        relay: Result<SocketAddr, std::io::Error>,
    ) {
        let Some(a) = self.allocations.get_mut(&client) else {
            if let Ok(r) = relay {
                self.push(TurnOutput::Release { relay: r });
            }
            return;
        };
        let txid = a.txid;
        let request = Message::new(Class::Request, Method::Allocate, txid);
        match relay {
            Ok(r) => {
                a.relay = Some(r);
                self.by_relay.insert(r, client);
                let lifetime = (a.expires.saturating_sub(now) / 1000) as u32;
                let key = a.key;
                let ok = Message::reply(&request, Class::Success)
                    .with(Attribute::XorRelayedAddress(r))
                    .with(Attribute::XorMappedAddress(client))
                    .with(Attribute::Lifetime(lifetime))
                    .encode(Some(&key));
                self.push(TurnOutput::ToClient {
                    to: client,
                    bytes: ok,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not bind a relay socket for a call");
                let key = a.key;
                self.remove(&client);
                self.refuse(client, &request, code::INSUFFICIENT_CAPACITY, Some(&key));
            }
        }
    }

    // ---- requests ----

    fn on_send(&mut self, now: Millis, from: SocketAddr, msg: &Message) {
        let (Some(peer), Some(data)) = (msg.peers().next(), msg.data()) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(a) = self.allocations.get(&from) else {
            self.stats.dropped += 1;
            return;
        };
        let (Some(relay), true) = (
            a.relay,
            a.permissions.get(&peer.ip()).is_some_and(|t| *t > now),
        ) else {
            self.stats.dropped += 1;
            return;
        };
        let user = a.user;
        if !self.spend(&user, now, data.len()) {
            self.stats.dropped += 1;
            return;
        }
        self.stats.relayed_bytes += data.len() as u64;
        self.push(TurnOutput::ToPeer {
            relay,
            to: peer,
            bytes: data.to_vec(),
        });
    }

    fn on_allocate(&mut self, now: Millis, from: SocketAddr, msg: &Message, bytes: &[u8]) {
        if let Some(a) = self.allocations.get(&from) {
            // A retransmission of the request that made it is answered alike; anything else
            // from this client is a mismatch (RFC 8656 §7.2).
            if a.txid == msg.txid
                && let Some(r) = a.relay
                && msg.check_integrity(bytes, &a.key)
            {
                let key = a.key;
                let ok = Message::reply(msg, Class::Success)
                    .with(Attribute::XorRelayedAddress(r))
                    .with(Attribute::XorMappedAddress(from))
                    .with(Attribute::Lifetime(
                        ((a.expires.saturating_sub(now)) / 1000) as u32,
                    ))
                    .encode(Some(&key));
                self.push(TurnOutput::ToClient {
                    to: from,
                    bytes: ok,
                });
            } else if a.txid != msg.txid {
                let key = a.key;
                self.refuse(from, msg, code::ALLOCATION_MISMATCH, Some(&key));
            }
            return;
        }
        let Some((user, username, key)) = self.authenticate_new(now, from, msg, bytes) else {
            return;
        };
        if msg.unknown_required() {
            return self.refuse(from, msg, code::BAD_REQUEST, Some(&key));
        }
        if msg.requested_transport() != Some(17) {
            return self.refuse(from, msg, code::UNSUPPORTED_TRANSPORT, Some(&key));
        }
        if self.allocations.len() >= self.settings.max_allocations {
            return self.refuse(from, msg, code::INSUFFICIENT_CAPACITY, Some(&key));
        }
        let used = self.usage.get(&user).map_or(0, |u| u.allocations);
        if used >= self.settings.max_allocations_per_user {
            return self.refuse(from, msg, code::ALLOCATION_QUOTA, Some(&key));
        }
        let lifetime = msg
            .lifetime()
            .unwrap_or(DEFAULT_LIFETIME_S)
            .clamp(1, MAX_LIFETIME_S);
        self.allocations.insert(
            from,
            Allocation {
                user,
                username,
                key,
                txid: msg.txid,
                relay: None,
                expires: now + lifetime as Millis * 1000,
                permissions: HashMap::new(),
            },
        );
        let rate = self.settings.user_bytes_per_second;
        let u = self.usage.entry(user).or_insert(Usage {
            allocations: 0,
            left: rate.saturating_mul(2),
            at: now,
        });
        u.allocations += 1;
        self.push(TurnOutput::Bind { client: from });
    }

    fn on_refresh(&mut self, now: Millis, from: SocketAddr, msg: &Message, bytes: &[u8]) {
        let Some(key) = self.authenticate_existing(now, from, msg, bytes) else {
            return;
        };
        let lifetime = msg
            .lifetime()
            .unwrap_or(DEFAULT_LIFETIME_S)
            .min(MAX_LIFETIME_S);
        if lifetime == 0 {
            self.remove(&from);
        } else if let Some(a) = self.allocations.get_mut(&from) {
            a.expires = now + lifetime as Millis * 1000;
        }
        let ok = Message::reply(msg, Class::Success)
            .with(Attribute::Lifetime(lifetime))
            .encode(Some(&key));
        self.push(TurnOutput::ToClient {
            to: from,
            bytes: ok,
        });
    }

    fn on_permission(&mut self, now: Millis, from: SocketAddr, msg: &Message, bytes: &[u8]) {
        let Some(key) = self.authenticate_existing(now, from, msg, bytes) else {
            return;
        };
        let peers: Vec<IpAddr> = msg.peers().map(|p| p.ip()).collect();
        let allow_loopback = self.settings.allow_loopback_peers;
        if peers.is_empty() {
            return self.refuse(from, msg, code::BAD_REQUEST, Some(&key));
        }
        // A peer that is not a public address (or loopback, when allowed) refuses the whole
        // request, as RFC 8656 §9.1 asks.
        if peers.iter().any(|ip| !address_allowed(*ip, allow_loopback)) {
            return self.refuse(from, msg, code::FORBIDDEN, Some(&key));
        }
        let Some(a) = self.allocations.get_mut(&from) else {
            return;
        };
        let new = peers
            .iter()
            .filter(|ip| !a.permissions.contains_key(ip))
            .count();
        if a.permissions.len() + new > MAX_PERMISSIONS {
            return self.refuse(from, msg, code::INSUFFICIENT_CAPACITY, Some(&key));
        }
        for ip in peers {
            a.permissions.insert(ip, now + PERMISSION_LIFETIME_MS);
        }
        let ok = Message::reply(msg, Class::Success).encode(Some(&key));
        self.push(TurnOutput::ToClient {
            to: from,
            bytes: ok,
        });
    }

    // ---- authentication ----

    /// A request that would open an allocation: a credential minted by this node, fresh,
    /// with a fresh nonce and a valid integrity tag. Otherwise the client is challenged (or
    /// refused) and `None` comes back.
    fn authenticate_new(
        &mut self,
        now: Millis,
        from: SocketAddr,
        msg: &Message,
        bytes: &[u8],
    ) -> Option<(UserId, String, [u8; 32])> {
        let Some(username) = msg.username() else {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        };
        if !self.nonce_fresh(now, from, msg) {
            return None;
        }
        let Ok((user, _)) = self.keys.open(username, now) else {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        };
        let key = long_term_key(username, REALM, &self.keys.password(username));
        if msg.realm() != Some(REALM) || !msg.check_integrity(bytes, &key) {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        }
        Some((user, username.to_string(), key))
    }

    /// A request about `from`'s allocation: signed with the key it was opened with.
    fn authenticate_existing(
        &mut self,
        now: Millis,
        from: SocketAddr,
        msg: &Message,
        bytes: &[u8],
    ) -> Option<[u8; 32]> {
        let Some(a) = self.allocations.get(&from) else {
            self.refuse(from, msg, code::ALLOCATION_MISMATCH, None);
            return None;
        };
        let key = a.key;
        let same_user = msg.username() == Some(a.username.as_str());
        if !same_user || !msg.check_integrity(bytes, &key) {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        }
        if !self.nonce_fresh(now, from, msg) {
            return None;
        }
        Some(key)
    }

    /// Whether `msg` carries a nonce this relay made for `from` lately; if not, `from` gets a
    /// 438 with a fresh one.
    fn nonce_fresh(&mut self, now: Millis, from: SocketAddr, msg: &Message) -> bool {
        let fresh = msg
            .nonce()
            .is_some_and(|n| self.keys.nonce_fresh(n, from, now));
        if !fresh {
            self.challenge(now, from, msg, code::STALE_NONCE);
        }
        fresh
    }

    /// A 401 or 438 with the realm and a fresh nonce, within the challenge budget.
    fn challenge(&mut self, now: Millis, from: SocketAddr, msg: &Message, code: u16) {
        let (left, at) = self.challenges;
        let refilled = (left + now.saturating_sub(at) * CHALLENGES_PER_SECOND / 1000)
            .min(CHALLENGES_PER_SECOND);
        if refilled == 0 {
            self.stats.dropped += 1;
            self.challenges = (0, if now > at { now } else { at });
            return;
        }
        self.challenges = (refilled - 1, now);
        self.stats.refused_requests += 1;
        let reply = Message::reply(msg, Class::Error)
            .with(Attribute::ErrorCode {
                code,
                reason: reason(code).into(),
            })
            .with(Attribute::Realm(REALM.into()))
            .with(Attribute::Nonce(self.keys.nonce(from, now)))
            .encode(None);
        self.push(TurnOutput::ToClient {
            to: from,
            bytes: reply,
        });
    }

    fn refuse(&mut self, to: SocketAddr, msg: &Message, code: u16, key: Option<&[u8; 32]>) {
        self.stats.refused_requests += 1;
        let reply = Message::reply(msg, Class::Error)
            .with(Attribute::ErrorCode {
                code,
                reason: reason(code).into(),
            })
            .encode(key);
        self.push(TurnOutput::ToClient { to, bytes: reply });
    }

    // ---- internals ----

    fn push(&mut self, o: TurnOutput) {
        if self.outputs.len() < MAX_QUEUED_OUTPUTS {
            self.outputs.push_back(o);
        } else {
            self.stats.dropped += 1;
        }
    }

    fn remove(&mut self, client: &SocketAddr) {
        let Some(a) = self.allocations.remove(client) else {
            return;
        };
        if let Some(r) = a.relay {
            self.by_relay.remove(&r);
            self.push(TurnOutput::Release { relay: r });
        }
        if let Some(u) = self.usage.get_mut(&a.user) {
            u.allocations -= 1;
            if u.allocations == 0 {
                self.usage.remove(&a.user);
            }
        }
    }

    /// Takes `n` bytes from `user`'s allowance.
    fn spend(&mut self, user: &UserId, now: Millis, n: usize) -> bool {
        let rate = self.settings.user_bytes_per_second;
        let Some(u) = self.usage.get_mut(user) else {
            return false;
        };
        let full = rate.saturating_mul(2);
        u.left = (u.left + now.saturating_sub(u.at) * rate / 1000).min(full);
        u.at = u.at.max(now);
        if u.left < n as u64 {
            return false;
        }
        u.left -= n as u64;
        true
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        code::BAD_REQUEST => "Bad Request",
        code::UNAUTHORIZED => "Unauthorized",
        code::FORBIDDEN => "Forbidden",
        code::ALLOCATION_MISMATCH => "Allocation Mismatch",
        code::STALE_NONCE => "Stale Nonce",
        code::UNSUPPORTED_TRANSPORT => "Unsupported Transport Protocol",
        code::ALLOCATION_QUOTA => "Allocation Quota Reached",
        _ => "Insufficient Capacity",
    }
}

/// A transaction id for a Data indication: indications need one and nothing answers it, so
/// a counter serves.
fn indication_txid(n: u64) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[4..].copy_from_slice(&n.to_be_bytes());
    t
}
