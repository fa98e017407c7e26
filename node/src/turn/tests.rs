//! The relay's server and client against each other over a virtual network: Alice's device
//! and her node's relay, Bob's device and his, on a clock the test moves.

use super::client::{Credentials, TurnClient, TurnError, TurnEvent};
use super::server::{TurnOutput, TurnServer, TurnSettings};
use hestia_protocol::Millis;
use hestia_protocol::identity::UserId;
use hestia_protocol::stun::{Attribute, Class, Message, Method, code};
use hestia_protocol::turn::TurnKeys;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const T0: Millis = 1_800_000_000_000;

fn settings() -> TurnSettings {
    TurnSettings {
        allow_loopback_peers: true,
        ..TurnSettings::default()
    }
}

/// One relay and the sockets it bound, with a counter for relay ports.
struct Relay {
    server: TurnServer,
    listen: SocketAddr,
    next_port: u16,
    keys_secret: [u8; 32],
}

impl Relay {
    fn new(ip: &str, secret: [u8; 32]) -> Relay {
        Relay {
            server: TurnServer::new(settings(), TurnKeys::derive(&secret)),
            listen: addr(&format!("{ip}:3478")),
            next_port: 50_000,
            keys_secret: secret,
        }
    }

    fn creds(&self, user: u8, now: Millis) -> Credentials {
        let c = TurnKeys::derive(&self.keys_secret).mint(&UserId([user; 32]), now);
        Credentials {
            server: self.listen,
            username: c.username,
            password: c.password,
        }
    }
}

/// Datagrams in flight on the virtual network: (source, destination, bytes).
type Net = VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>;

struct World {
    start: Instant,
    now: Instant,
    relays: Vec<Relay>,
    /// (device address, client)
    clients: Vec<(SocketAddr, TurnClient)>,
    /// What each client's device got from peers: (client index, peer, bytes).
    received: Vec<(usize, SocketAddr, Vec<u8>)>,
    events: Vec<(usize, TurnEvent)>,
    net: Net,
}

impl World {
    fn millis(&self) -> Millis {
        T0 + self.now.duration_since(self.start).as_millis() as Millis
    }

    fn pump(&mut self) {
        for _ in 0..10_000 {
            let now = self.millis();
            for r in &mut self.relays {
                while let Some(o) = r.server.poll_output() {
                    match o {
                        TurnOutput::ToClient { to, bytes } => {
                            self.net.push_back((r.listen, to, bytes))
                        }
                        TurnOutput::ToPeer { relay, to, bytes } => {
                            self.net.push_back((relay, to, bytes))
                        }
                        TurnOutput::Bind { client } => {
                            r.next_port += 1;
                            let relay = SocketAddr::new(r.listen.ip(), r.next_port);
                            r.server.handle_bound(now, client, Ok(relay));
                        }
                        TurnOutput::Release { .. } => {}
                    }
                }
            }
            for (i, (dev, c)) in self.clients.iter_mut().enumerate() {
                while let Some(b) = c.poll_transmit() {
                    self.net.push_back((*dev, c.server(), b));
                }
                while let Some(e) = c.poll_event() {
                    self.events.push((i, e));
                }
            }
            let Some((src, dst, bytes)) = self.net.pop_front() else {
                return;
            };
            if let Some(r) = self.relays.iter_mut().find(|r| r.listen == dst) {
                r.server.handle_client(now, src, &bytes);
            } else if let Some(r) = self
                .relays
                .iter_mut()
                .find(|r| r.listen.ip() == dst.ip() && dst.port() > 50_000)
            {
                r.server.handle_peer(now, dst, src, &bytes);
            } else if let Some(i) = self.clients.iter().position(|(d, _)| *d == dst) {
                let now = self.now;
                if let Some((peer, data)) = self.clients[i].1.handle_datagram(now, src, &bytes) {
                    self.received.push((i, peer, data));
                }
            }
        }
        panic!("the network never went quiet");
    }

    /// Moves the clock by `d`, running timers due.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        let ms = self.millis();
        for (_, c) in &mut self.clients {
            c.handle_timeout(now);
        }
        for r in &mut self.relays {
            r.server.handle_timeout(ms);
        }
        self.pump();
    }

    fn relayed(&self, i: usize) -> SocketAddr {
        self.clients[i].1.relayed().expect("allocated")
    }
}

/// Alice (user 1) on relay 127.0.0.11, Bob (user 2) on relay 127.0.0.12, both allocated.
fn two_relays() -> World {
    let start = Instant::now();
    let a = Relay::new("127.0.0.11", [1; 32]);
    let b = Relay::new("127.0.0.12", [2; 32]);
    let alice = TurnClient::new(a.creds(1, T0), 7);
    let bob = TurnClient::new(b.creds(2, T0), 9);
    let mut w = World {
        start,
        now: start,
        relays: vec![a, b],
        clients: vec![
            (addr("127.0.0.21:5000"), alice),
            (addr("127.0.0.22:6000"), bob),
        ],
        received: Vec::new(),
        events: Vec::new(),
        net: Net::new(),
    };
    let now = w.now;
    for (_, c) in &mut w.clients {
        c.start(now);
    }
    w.pump();
    w
}

#[test]
fn two_devices_reach_each_other_only_through_their_own_relays() {
    let mut w = two_relays();
    let (ra, rb) = (w.relayed(0), w.relayed(1));
    assert_eq!(ra.ip().to_string(), "127.0.0.11");
    assert_eq!(rb.ip().to_string(), "127.0.0.12");
    assert!(w.events.contains(&(0, TurnEvent::Allocated(ra))));
    let now = w.now;
    // Before permissions nothing passes: the client will not wrap it, a relay drops it.
    assert!(w.clients[0].1.send(rb, b"early").is_none());
    w.clients[0].1.permit(now, rb.ip());
    w.clients[1].1.permit(now, ra.ip());
    w.pump();
    let to_bob = w.clients[0].1.send(rb, b"hello bob").unwrap();
    let to_alice = w.clients[1].1.send(ra, b"hello alice").unwrap();
    w.net
        .push_back((addr("127.0.0.21:5000"), w.relays[0].listen, to_bob));
    w.net
        .push_back((addr("127.0.0.22:6000"), w.relays[1].listen, to_alice));
    w.pump();
    // Each device got the other's bytes from the other's relay address, never from the
    // other device.
    assert!(w.received.contains(&(1, ra, b"hello bob".to_vec())));
    assert!(w.received.contains(&(0, rb, b"hello alice".to_vec())));
    assert_eq!(w.received.len(), 2);
    assert_eq!(w.relays[0].server.stats().allocations, 1);

    // Refreshes keep the allocation past its lifetime; a close ends it at once.
    for _ in 0..25 {
        w.advance(Duration::from_secs(60));
    }
    assert_eq!(w.relays[0].server.stats().allocations, 1);
    let to_bob = w.clients[0].1.send(rb, b"still here").unwrap();
    w.net
        .push_back((addr("127.0.0.21:5000"), w.relays[0].listen, to_bob));
    w.pump();
    assert!(
        w.received.contains(&(1, ra, b"still here".to_vec())),
        "permissions refreshed"
    );
    let now = w.now;
    w.clients[0].1.close(now);
    w.pump();
    assert_eq!(w.relays[0].server.stats().allocations, 0);
}

#[test]
fn a_stranger_a_forged_credential_and_another_nodes_credential_allocate_nothing() {
    let mut w = two_relays();
    let listen = w.relays[0].listen;
    let now = w.now;
    // Bob's node's credential on Alice's node: refused (401), no allocation.
    let wrong = w.relays[1].creds(2, T0);
    let wrong = Credentials {
        server: listen,
        ..wrong
    };
    let mut c = TurnClient::new(wrong, 3);
    c.start(now);
    w.clients.push((addr("127.0.0.23:7000"), c));
    // A right username with a wrong password.
    let mut guess = w.relays[0].creds(3, T0);
    guess.password = "0".repeat(64);
    let mut c = TurnClient::new(guess, 5);
    c.start(now);
    w.clients.push((addr("127.0.0.24:7000"), c));
    w.pump();
    assert!(
        w.events
            .contains(&(2, TurnEvent::Failed(TurnError::Refused(code::UNAUTHORIZED))))
    );
    assert!(
        w.events
            .contains(&(3, TurnEvent::Failed(TurnError::Refused(code::UNAUTHORIZED))))
    );
    assert_eq!(w.relays[0].server.stats().allocations, 1, "only Alice's");
    // An expired credential opens nothing either.
    w.advance(Duration::from_secs(11 * 60));
    let mut late = TurnClient::new(w.relays[0].creds(4, T0), 11);
    let now = w.now;
    late.start(now);
    w.clients.push((addr("127.0.0.25:7000"), late));
    w.pump();
    assert!(matches!(w.events.last(), Some((4, TurnEvent::Failed(_)))));
    // A Send indication from an address with no allocation relays nothing.
    let rb = w.relayed(1);
    let forged = Message::new(Class::Indication, Method::Send, [1; 12])
        .with(Attribute::XorPeerAddress(rb))
        .with(Attribute::Data(b"spoof".to_vec()))
        .encode(None);
    w.net.push_back((addr("127.0.0.99:1"), listen, forged));
    w.pump();
    assert!(w.received.is_empty());
}

#[test]
fn allocations_per_user_peers_outside_the_internet_and_floods_are_bounded() {
    let mut w = two_relays();
    let now = w.now;
    // Alice has one; three more fit, the fifth is over her quota.
    for i in 0..4u16 {
        let mut c = TurnClient::new(w.relays[0].creds(1, T0), 100 + i as u64);
        c.start(now);
        w.clients
            .push((addr(&format!("127.0.0.21:{}", 5001 + i)), c));
    }
    w.pump();
    assert_eq!(w.relays[0].server.stats().allocations, 4);
    assert!(w.events.contains(&(
        5,
        TurnEvent::Failed(TurnError::Refused(code::ALLOCATION_QUOTA))
    )));

    // A candidate naming a private address is refused by the relay, and the call's others
    // stay usable.
    let rb = w.relayed(1);
    w.clients[0].1.permit(now, "10.1.2.3".parse().unwrap());
    w.pump();
    assert!(
        w.events
            .contains(&(0, TurnEvent::PermissionRefused("10.1.2.3".parse().unwrap())))
    );
    w.clients[0].1.permit(now, rb.ip());
    let ra = w.relayed(0);
    w.clients[1].1.permit(now, ra.ip());
    w.pump();

    // Far more than a user's allowance in one instant: most is dropped, the relay's memory
    // does not hold it, and the allowance comes back with time.
    for _ in 0..2_000 {
        let b = w.clients[0].1.send(rb, &[0u8; 1000]).unwrap();
        w.net
            .push_back((addr("127.0.0.21:5000"), w.relays[0].listen, b));
    }
    w.pump();
    let passed = w.received.iter().filter(|(i, _, _)| *i == 1).count();
    assert!(
        (100..=140).contains(&passed),
        "{passed} of 2000 passed a 128 KiB burst"
    );
    w.advance(Duration::from_secs(2));
    let b = w.clients[0].1.send(rb, b"after").unwrap();
    w.net
        .push_back((addr("127.0.0.21:5000"), w.relays[0].listen, b));
    w.pump();
    assert!(w.received.contains(&(1, ra, b"after".to_vec())));

    // Unauthenticated requests from a forged source get at most the challenge budget.
    let listen = w.relays[0].listen;
    for i in 0..1_000u32 {
        let mut tx = [0u8; 12];
        tx[..4].copy_from_slice(&i.to_be_bytes());
        let m = Message::new(Class::Request, Method::Allocate, tx)
            .with(Attribute::RequestedTransport(17))
            .encode(None);
        w.relays[0]
            .server
            .handle_client(T0, addr("203.0.113.7:9"), &m);
    }
    let mut challenges = 0;
    while let Some(o) = w.relays[0].server.poll_output() {
        challenges += matches!(o, TurnOutput::ToClient { .. }) as u32;
    }
    assert!(
        challenges <= super::server::CHALLENGES_PER_SECOND as u32,
        "{challenges}"
    );
    let _ = listen;
}

#[test]
fn a_relay_that_never_answers_fails_the_allocation_within_seconds() {
    let start = Instant::now();
    let mut c = TurnClient::new(
        Credentials {
            server: addr("127.0.0.11:3478"),
            username: "u".into(),
            password: "p".into(),
        },
        1,
    );
    c.start(start);
    let mut now = start;
    let mut sent = 0;
    loop {
        while c.poll_transmit().is_some() {
            sent += 1;
        }
        if let Some(e) = c.poll_event() {
            assert_eq!(e, TurnEvent::Failed(TurnError::Unreachable));
            break;
        }
        now = c.poll_timeout().expect("a retransmission is due");
        c.handle_timeout(now);
    }
    assert_eq!(sent, super::client::MAX_TRIES);
    assert!(now - start < Duration::from_secs(10), "{:?}", now - start);
}
