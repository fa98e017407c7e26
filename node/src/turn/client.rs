//! A device's side of its home node's call relay: a TURN client (RFC 8656, UDP) as a sans-IO
//! state machine. It allocates a relayed address with the credentials the node handed out,
//! keeps it and its permissions fresh, wraps what the call sends into Send indications and
//! unwraps Data indications. Every datagram it makes goes to the relay, and it takes
//! datagrams only from the relay: the other device never learns this one's address.

use super::Bytes;
use hestia_protocol::stun::{Attribute, Class, Message, Method, code, long_term_key};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// First retransmission of a request, doubled each time up to `MAX_RTO`; a request is tried
/// this many times (≈ 8 s in all) before the relay counts as unreachable.
pub const RTO: Duration = Duration::from_millis(250);
pub const MAX_RTO: Duration = Duration::from_secs(2);
pub const MAX_TRIES: u32 = 6;
/// Lifetime asked for; the allocation is refreshed at half of what the relay granted.
pub const LIFETIME_S: u32 = 600;
/// Permissions are refreshed this often (they last 300 s).
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Peers this client will ask permissions for.
pub const MAX_PEERS: usize = 8;

/// What the relay handed out for one call (from `ClientResponse::Turn`).
#[derive(Clone)]
pub struct Credentials {
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error("your node's call relay did not answer")]
    Unreachable,
    #[error("your node's call relay refused the allocation ({0})")]
    Refused(u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    /// The relayed address: the one candidate this device offers.
    Allocated(SocketAddr),
    /// The relay would not let this peer in (it is not a public address, say).
    PermissionRefused(IpAddr),
    Failed(TurnError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Allocating,
    Allocated(SocketAddr),
    Failed(TurnError),
    Closed,
}

#[derive(Clone, Debug)]
enum Purpose {
    Allocate,
    Refresh,
    Permit(Vec<IpAddr>),
}

struct Pending {
    purpose: Purpose,
    bytes: Bytes,
    tries: u32,
    next: Instant,
    /// A challenge was answered already: another 401 means the credentials are wrong.
    authenticated: bool,
}

pub struct TurnClient {
    creds: Credentials,
    phase: Phase,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<[u8; 32]>,
    pending: HashMap<[u8; 12], Pending>,
    /// Peers permitted (or asked for), and when to refresh.
    peers: HashMap<IpAddr, Instant>,
    refresh_at: Option<Instant>,
    transmits: VecDeque<Bytes>,
    events: VecDeque<TurnEvent>,
    rng: u64,
}

impl TurnClient {
    /// `seed` makes the transaction ids (any random value; a test passes a fixed one).
    pub fn new(creds: Credentials, seed: u64) -> TurnClient {
        TurnClient {
            creds,
            phase: Phase::Idle,
            realm: None,
            nonce: None,
            key: None,
            pending: HashMap::new(),
            peers: HashMap::new(),
            refresh_at: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng: seed | 1,
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.creds.server
    }

    pub fn relayed(&self) -> Option<SocketAddr> {
        match self.phase {
            Phase::Allocated(r) => Some(r),
            _ => None,
        }
    }

    /// Asks for the allocation (once).
    pub fn start(&mut self, now: Instant) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Allocating;
            self.request(now, Purpose::Allocate);
        }
    }

    /// Lets `peer` send to the relayed address (and this client send to it).
    pub fn permit(&mut self, now: Instant, peer: IpAddr) {
        if self.peers.contains_key(&peer) || self.peers.len() >= MAX_PEERS {
            return;
        }
        self.peers.insert(peer, now + PERMISSION_REFRESH);
        if matches!(self.phase, Phase::Allocated(_)) {
            self.request(now, Purpose::Permit(vec![peer]));
        }
    }

    /// Wraps `data` for `peer` into a datagram for the relay, if the allocation is up and the
    /// peer was permitted.
    pub fn send(&mut self, peer: SocketAddr, data: &[u8]) -> Option<Bytes> {
        if !matches!(self.phase, Phase::Allocated(_)) || !self.peers.contains_key(&peer.ip()) {
            return None;
        }
        let txid = self.txid();
        Some(
            Message::new(Class::Indication, Method::Send, txid)
                .with(Attribute::XorPeerAddress(peer))
                .with(Attribute::Data(data.to_vec()))
                .encode(None),
        )
    }

    /// Ends the allocation (a Refresh with lifetime 0, sent once and not retried).
    pub fn close(&mut self, now: Instant) {
        if let Phase::Allocated(_) = self.phase {
            let txid = self.txid();
            let bytes = self.signed(Method::Refresh, txid, vec![Attribute::Lifetime(0)]);
            self.transmits.push_back(bytes);
        }
        let _ = now;
        self.pending.clear();
        self.phase = Phase::Closed;
    }

    /// A datagram from `source`. Only the relay's are read; a Data indication gives back the
    /// peer and what it sent.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
    ) -> Option<(SocketAddr, Bytes)> {
        if source != self.creds.server {
            return None;
        }
        let msg = Message::decode(bytes).ok()?;
        match msg.class {
            Class::Indication if msg.method == Method::Data => {
                let peer = msg.peers().next()?;
                if !self.peers.contains_key(&peer.ip()) {
                    return None;
                }
                Some((peer, msg.data()?.to_vec()))
            }
            Class::Success | Class::Error => {
                self.on_response(now, &msg, bytes);
                None
            }
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<[u8; 12]> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(t, _)| *t)
            .collect();
        for txid in due {
            let Some(p) = self.pending.get_mut(&txid) else {
                continue;
            };
            if p.tries >= MAX_TRIES {
                let purpose = p.purpose.clone();
                self.pending.remove(&txid);
                match purpose {
                    Purpose::Allocate | Purpose::Refresh => self.fail(TurnError::Unreachable),
                    Purpose::Permit(_) => {}
                }
                continue;
            }
            p.tries += 1;
            p.next = now + (RTO * 2u32.pow(p.tries - 1)).min(MAX_RTO);
            self.transmits.push_back(p.bytes.clone());
        }
        if let Phase::Allocated(_) = self.phase {
            if self.refresh_at.is_some_and(|t| t <= now) {
                self.refresh_at = None;
                self.request(now, Purpose::Refresh);
            }
            let stale: Vec<IpAddr> = self
                .peers
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(ip, _)| *ip)
                .collect();
            if !stale.is_empty() {
                for ip in &stale {
                    self.peers.insert(*ip, now + PERMISSION_REFRESH);
                }
                self.request(now, Purpose::Permit(stale));
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = self.pending.values().map(|p| p.next).min();
        if let Phase::Allocated(_) = self.phase {
            for t in self.refresh_at.iter().chain(self.peers.values()) {
                at = Some(at.map_or(*t, |a| a.min(*t)));
            }
        }
        at
    }

    /// Next datagram for the relay.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn txid(&mut self) -> [u8; 12] {
        // xorshift64*: transaction ids need to be unguessable only to an off-path party that
        // cannot see this traffic anyway; the seed is random per call.
        let mut t = [0u8; 12];
        for chunk in t.chunks_mut(6) {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            chunk.copy_from_slice(&self.rng.to_be_bytes()[..6]);
        }
        t
    }

    fn attributes(purpose: &Purpose) -> (Method, Vec<Attribute>) {
        match purpose {
            Purpose::Allocate => (
                Method::Allocate,
                vec![
                    Attribute::RequestedTransport(17),
                    Attribute::Lifetime(LIFETIME_S),
                ],
            ),
            Purpose::Refresh => (Method::Refresh, vec![Attribute::Lifetime(LIFETIME_S)]),
            Purpose::Permit(ips) => (
                Method::CreatePermission,
                ips.iter()
                    .map(|ip| Attribute::XorPeerAddress(SocketAddr::new(*ip, 0)))
                    .collect(),
            ),
        }
    }

    /// The message signed with the credentials, once a challenge gave realm and nonce.
    fn signed(&self, method: Method, txid: [u8; 12], attrs: Vec<Attribute>) -> Bytes {
        let mut m = Message::new(Class::Request, method, txid);
        m.attributes = attrs;
        match (&self.realm, &self.nonce, &self.key) {
            (Some(realm), Some(nonce), Some(key)) => m
                .with(Attribute::Username(self.creds.username.clone()))
                .with(Attribute::Realm(realm.clone()))
                .with(Attribute::Nonce(nonce.clone()))
                .encode(Some(key)),
            _ => m.encode(None),
        }
    }

    fn request(&mut self, now: Instant, purpose: Purpose) {
        let txid = self.txid();
        let (method, attrs) = Self::attributes(&purpose);
        let bytes = self.signed(method, txid, attrs);
        self.transmits.push_back(bytes.clone());
        self.pending.insert(
            txid,
            Pending {
                purpose,
                bytes,
                tries: 1,
                next: now + RTO,
                authenticated: self.key.is_some(),
            },
        );
    }

    fn fail(&mut self, e: TurnError) {
        if !matches!(self.phase, Phase::Failed(_) | Phase::Closed) {
            self.phase = Phase::Failed(e);
            self.pending.clear();
            self.events.push_back(TurnEvent::Failed(e));
        }
    }

    fn on_response(&mut self, now: Instant, msg: &Message, bytes: &[u8]) {
        let Some(p) = self.pending.get(&msg.txid) else {
            return; // not ours, or answered already
        };
        let purpose = p.purpose.clone();
        let authenticated = p.authenticated;
        // A success must be signed with our key: a forged one could name a relayed address
        // of an attacker's choosing.
        if msg.class == Class::Success {
            if !self.key.is_some_and(|k| msg.check_integrity(bytes, &k)) {
                return;
            }
            self.pending.remove(&msg.txid);
            match purpose {
                Purpose::Allocate => {
                    let Some(relayed) = msg.relayed() else {
                        return self.fail(TurnError::Refused(code::BAD_REQUEST));
                    };
                    let lifetime = msg.lifetime().unwrap_or(LIFETIME_S).max(2);
                    self.phase = Phase::Allocated(relayed);
                    self.refresh_at = Some(now + Duration::from_secs(lifetime as u64 / 2));
                    self.events.push_back(TurnEvent::Allocated(relayed));
                    let peers: Vec<IpAddr> = self.peers.keys().copied().collect();
                    if !peers.is_empty() {
                        self.request(now, Purpose::Permit(peers));
                    }
                }
                Purpose::Refresh => {
                    let lifetime = msg.lifetime().unwrap_or(LIFETIME_S).max(2);
                    self.refresh_at = Some(now + Duration::from_secs(lifetime as u64 / 2));
                }
                Purpose::Permit(_) => {}
            }
            return;
        }
        let code = msg.error_code().unwrap_or(0);
        match code {
            code::UNAUTHORIZED | code::STALE_NONCE
                if !(authenticated && code == code::UNAUTHORIZED) =>
            {
                // The challenge: take realm and nonce, and send the request again, signed.
                let (Some(realm), Some(nonce)) = (msg.realm(), msg.nonce()) else {
                    return;
                };
                self.realm = Some(realm.to_string());
                self.nonce = Some(nonce.to_string());
                self.key = Some(long_term_key(
                    &self.creds.username,
                    realm,
                    &self.creds.password,
                ));
                self.pending.remove(&msg.txid);
                self.request(now, purpose);
            }
            code::UNAUTHORIZED => {
                // Signed, and refused again: the credentials are not (or no longer) good.
                self.pending.remove(&msg.txid);
                self.fail(TurnError::Refused(code));
            }
            _ => {
                // Any other error must be signed, once we have a key.
                if self.key.is_some_and(|k| !msg.check_integrity(bytes, &k)) {
                    return;
                }
                self.pending.remove(&msg.txid);
                match purpose {
                    Purpose::Allocate | Purpose::Refresh => self.fail(TurnError::Refused(code)),
                    Purpose::Permit(ips) => {
                        for ip in ips {
                            self.peers.remove(&ip);
                            self.events.push_back(TurnEvent::PermissionRefused(ip));
                        }
                    }
                }
            }
        }
    }
}
