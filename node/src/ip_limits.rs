//! Inbound connections per source address. Peer ids are free, so the per-peer limit of
//! `connection_limits` stops nobody who generates keys; a source address costs an attacker
//! more. Each IP may hold [`MAX_INBOUND_PER_IP`] inbound connections, half-open ones included,
//! refused before the Noise handshake is paid for. Loopback is exempt: local tools, tests and
//! benchmarks all come from it, and anyone on the machine can do worse. (A test of the limit
//! itself turns the exemption off: `hestia node run --limit-loopback`.)
//!
//! [`IpCounts`] is the decision, pure and tested directly; [`Behaviour`] feeds it the swarm's
//! connection events.

use libp2p::core::Endpoint;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::task::{Context, Poll};

/// Inbound connections one address may hold: a household or office behind one NAT with many
/// devices, far below the node's 12,000.
pub const MAX_INBOUND_PER_IP: usize = 64;

/// Which inbound connections each source address holds.
#[derive(Default)]
pub struct IpCounts {
    by_conn: HashMap<ConnectionId, IpAddr>,
    by_ip: HashMap<IpAddr, usize>,
    /// Count loopback too (tests of this limit); normally it is exempt.
    pub limit_loopback: bool,
}

impl IpCounts {
    /// Admits a new inbound connection from `ip`, or refuses it (nothing is recorded then).
    pub fn admit(&mut self, conn: ConnectionId, ip: IpAddr) -> bool {
        if (ip.is_loopback() && !self.limit_loopback) || self.by_conn.contains_key(&conn) {
            return true;
        }
        let n = self.by_ip.entry(ip).or_default();
        if *n >= MAX_INBOUND_PER_IP {
            return false;
        }
        *n += 1;
        self.by_conn.insert(conn, ip);
        true
    }

    /// A connection closed or failed to establish.
    pub fn release(&mut self, conn: ConnectionId) {
        if let Some(ip) = self.by_conn.remove(&conn)
            && let Some(n) = self.by_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }

    pub fn held(&self, ip: &IpAddr) -> usize {
        self.by_ip.get(ip).copied().unwrap_or(0)
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

#[derive(Debug)]
struct TooManyFromAddress;

impl std::fmt::Display for TooManyFromAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more than {MAX_INBOUND_PER_IP} inbound connections from one address"
        )
    }
}

impl std::error::Error for TooManyFromAddress {}

/// The swarm side of [`IpCounts`].
#[derive(Default)]
pub struct Behaviour {
    counts: IpCounts,
}

impl Behaviour {
    /// Applies the limit to loopback connections too (for a test of the limit itself).
    pub fn limit_loopback(&mut self, on: bool) {
        self.counts.limit_loopback = on;
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        conn: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match ip_of(remote) {
            Some(ip) if !self.counts.admit(conn, ip) => {
                Err(ConnectionDenied::new(TooManyFromAddress))
            }
            _ => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.counts.release(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_is_limited_others_and_loopback_are_not() {
        let mut c = IpCounts::default();
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "198.51.100.1".parse().unwrap();
        for i in 0..MAX_INBOUND_PER_IP {
            assert!(c.admit(ConnectionId::new_unchecked(i), a));
        }
        let next = ConnectionId::new_unchecked(10_000);
        assert!(!c.admit(next, a), "one more from the same address");
        assert!(c.admit(ConnectionId::new_unchecked(10_001), b));
        for i in 20_000..20_000 + 2 * MAX_INBOUND_PER_IP {
            assert!(c.admit(ConnectionId::new_unchecked(i), "127.0.0.1".parse().unwrap()));
        }
        // A closed (or failed) connection frees its place; a refused one held none.
        c.release(next);
        assert_eq!(c.held(&a), MAX_INBOUND_PER_IP);
        c.release(ConnectionId::new_unchecked(0));
        assert!(c.admit(next, a));
        assert_eq!(c.held(&a), MAX_INBOUND_PER_IP);
    }

    #[test]
    fn the_address_is_read_from_the_multiaddr() {
        let ip = ip_of(&"/ip4/203.0.113.7/tcp/4001".parse().unwrap());
        assert_eq!(ip, Some("203.0.113.7".parse().unwrap()));
        let ip = ip_of(&"/ip6/2001:db8::1/udp/4001/quic-v1".parse().unwrap());
        assert_eq!(ip, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(ip_of(&"/dns4/example.org/tcp/1".parse().unwrap()), None);
    }
}
