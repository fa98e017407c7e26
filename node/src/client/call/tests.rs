//! Two calls driven against each other on a virtual clock over an in-memory link (a few
//! lines here stand in for str0m's unpublished netem): whichever side has the earliest
//! deadline goes next, so a minute of call runs in a fraction of a second. With
//! [`Pair::relayed`] each device reaches the other only through its own node's relay (two
//! real [`TurnServer`]s on the same virtual link).

use super::audio::{Meter, Silence, Tone};
use super::*;
use crate::turn::client::Credentials;
use crate::turn::server::{TurnOutput, TurnServer, TurnSettings};
use hestia_protocol::identity::UserId;
use hestia_protocol::turn::TurnKeys;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const ALICE: &str = "10.0.0.1:5000";
const BOB: &str = "10.0.0.2:6000";
/// On a relayed pair: the devices and their nodes' relays, each on its own address.
const ALICE_DEVICE: &str = "127.0.0.21:5000";
const BOB_DEVICE: &str = "127.0.0.22:6000";
const ALICE_RELAY: &str = "127.0.0.11:3478";
const BOB_RELAY: &str = "127.0.0.12:3478";

/// A datagram in flight: source, destination, bytes.
type InFlight = (SocketAddr, SocketAddr, Vec<u8>);

/// Datagrams in flight: delivered `latency` after they leave, unless the link is cut.
struct Link {
    latency: Duration,
    cut: bool,
    /// Drop every n-th datagram (0: none).
    drop_every: u64,
    /// (delivery time, sequence) → datagram
    queue: BTreeMap<(Instant, u64), InFlight>,
    seq: u64,
    /// Every datagram that left, by (source, destination): who talked to whom.
    seen: Vec<(SocketAddr, SocketAddr)>,
}

impl Link {
    fn send(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: Vec<u8>) {
        self.seq += 1;
        self.seen.push((source, destination));
        let dropped = self.drop_every > 0 && self.seq.is_multiple_of(self.drop_every);
        if !self.cut && !dropped {
            self.queue
                .insert((now + self.latency, self.seq), (source, destination, bytes));
        }
    }
}

/// A node's relay on the link: its server, its address, the relay ports it handed out.
struct Relay {
    server: TurnServer,
    listen: SocketAddr,
    secret: [u8; 32],
    relays: Vec<SocketAddr>,
}

impl Relay {
    fn new(listen: &str, secret: u8) -> Relay {
        let settings = TurnSettings {
            allow_loopback_peers: true,
            ..TurnSettings::default()
        };
        Relay {
            server: TurnServer::new(settings, TurnKeys::derive(&[secret; 32])),
            listen: addr(listen),
            secret: [secret; 32],
            relays: Vec::new(),
        }
    }

    fn route(&self, user: u8, device: &str) -> Route {
        let c = TurnKeys::derive(&self.secret).mint(&UserId([user; 32]), millis(Duration::ZERO));
        let creds = Credentials {
            server: self.listen,
            username: c.username,
            password: c.password,
        };
        Route::Relayed {
            turn: Box::new(TurnClient::new(creds, user as u64 * 7919)),
            local: addr(device),
        }
    }

    /// Runs the server's outputs onto the link.
    fn drain(&mut self, now: Instant, since: Instant, link: &mut Link) {
        let ms = millis(now - since);
        while let Some(o) = self.server.poll_output() {
            match o {
                TurnOutput::ToClient { to, bytes } => link.send(now, self.listen, to, bytes),
                TurnOutput::ToPeer { relay, to, bytes } => link.send(now, relay, to, bytes),
                TurnOutput::Bind { client } => {
                    let r = SocketAddr::new(self.listen.ip(), 40_000 + self.relays.len() as u16);
                    self.relays.push(r);
                    self.server.handle_bound(ms, client, Ok(r));
                }
                TurnOutput::Release { relay } => self.relays.retain(|r| *r != relay),
            }
        }
    }
}

/// Virtual wall-clock time for the relays (they count Unix milliseconds).
fn millis(since_start: Duration) -> hestia_protocol::Millis {
    1_800_000_000_000 + since_start.as_millis() as hestia_protocol::Millis
}

struct Pair {
    start: Instant,
    now: Instant,
    alice: Call,
    bob: Option<Call>,
    /// The devices' own addresses (what the other side must never see on a relayed pair).
    alice_at: SocketAddr,
    bob_at: SocketAddr,
    /// Bob's route, until his device rings.
    bob_route: Option<Route>,
    relays: Vec<Relay>,
    link: Link,
    /// Signals each way (alice → bob first), delivered after `signal_delay`.
    to_bob: Vec<CallSignal>,
    to_alice: Vec<CallSignal>,
    alice_events: Vec<CallEvent>,
    bob_events: Vec<CallEvent>,
    alice_wake: Instant,
    bob_wake: Instant,
    heard_by_bob: Arc<Mutex<Meter>>,
    heard_by_alice: Arc<Mutex<Meter>>,
    /// Every signal Alice's device received.
    alice_heard_signals: Vec<CallSignal>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl Pair {
    /// Devices straight to each other.
    fn new() -> Pair {
        Pair::with(
            Route::Direct(vec![addr(ALICE)]),
            Route::Direct(vec![addr(BOB)]),
            (addr(ALICE), addr(BOB)),
            Vec::new(),
        )
    }

    /// Each device through its own node's relay.
    fn relayed() -> Pair {
        let a = Relay::new(ALICE_RELAY, 1);
        let b = Relay::new(BOB_RELAY, 2);
        let (ra, rb) = (a.route(1, ALICE_DEVICE), b.route(2, BOB_DEVICE));
        Pair::with(ra, rb, (addr(ALICE_DEVICE), addr(BOB_DEVICE)), vec![a, b])
    }

    fn with(alice: Route, bob: Route, at: (SocketAddr, SocketAddr), relays: Vec<Relay>) -> Pair {
        let now = Instant::now();
        let heard_by_alice = Arc::new(Mutex::new(Meter::default()));
        let alice = Call::dial(
            CallId([1; 16]),
            now,
            alice,
            Box::new(Tone::new(440.0)),
            Box::new(heard_by_alice.clone()),
        )
        .unwrap();
        let mut p = Pair {
            start: now,
            now,
            alice,
            bob: None,
            alice_at: at.0,
            bob_at: at.1,
            bob_route: Some(bob),
            relays,
            link: Link {
                latency: Duration::from_millis(15),
                cut: false,
                drop_every: 0,
                queue: BTreeMap::new(),
                seq: 0,
                seen: Vec::new(),
            },
            to_bob: Vec::new(),
            to_alice: Vec::new(),
            alice_events: Vec::new(),
            bob_events: Vec::new(),
            alice_wake: now,
            bob_wake: now,
            heard_by_bob: Arc::new(Mutex::new(Meter::default())),
            heard_by_alice,
            alice_heard_signals: Vec::new(),
        };
        p.drain_alice();
        p
    }

    fn drain(
        call: &mut Call,
        link: &mut Link,
        now: Instant,
        signals: &mut Vec<CallSignal>,
        events: &mut Vec<CallEvent>,
    ) -> Instant {
        loop {
            match call.poll_output() {
                CallOutput::Timeout(t) => return t,
                CallOutput::Transmit {
                    source,
                    destination,
                    contents,
                } => link.send(now, source, destination, contents),
                CallOutput::Signal(s) => signals.push(s),
                CallOutput::Event(e) => events.push(e),
            }
        }
    }

    fn drain_alice(&mut self) {
        self.alice_wake = Pair::drain(
            &mut self.alice,
            &mut self.link,
            self.now,
            &mut self.to_bob,
            &mut self.alice_events,
        );
    }

    fn drain_bob(&mut self) {
        if let Some(bob) = &mut self.bob {
            self.bob_wake = Pair::drain(
                bob,
                &mut self.link,
                self.now,
                &mut self.to_alice,
                &mut self.bob_events,
            );
        }
    }

    /// Hands a datagram to whoever has its destination address.
    fn deliver(&mut self, src: SocketAddr, dst: SocketAddr, bytes: &[u8]) {
        let (now, ms) = (self.now, millis(self.now - self.start));
        if dst == self.alice_at {
            self.alice.handle_packet(now, src, dst, bytes).unwrap();
            self.drain_alice();
        } else if dst == self.bob_at {
            if let Some(bob) = &mut self.bob {
                bob.handle_packet(now, src, dst, bytes).unwrap();
                self.drain_bob();
            }
        } else if let Some(r) = self.relays.iter_mut().find(|r| r.listen == dst) {
            r.server.handle_client(ms, src, bytes);
            r.drain(now, self.start, &mut self.link);
        } else if let Some(r) = self.relays.iter_mut().find(|r| r.relays.contains(&dst)) {
            r.server.handle_peer(ms, dst, src, bytes);
            r.drain(now, self.start, &mut self.link);
        }
    }

    /// Bob's device receives Alice's pending signals (an offer makes his call).
    fn deliver_signals(&mut self) {
        for s in std::mem::take(&mut self.to_bob) {
            match (&mut self.bob, s) {
                (None, CallSignal::Offer { call, sdp }) => {
                    let Some(route) = self.bob_route.take() else {
                        continue;
                    };
                    let bob = Call::incoming(
                        call,
                        &sdp,
                        self.now,
                        route,
                        Box::new(Tone::new(1000.0)),
                        Box::new(self.heard_by_bob.clone()),
                    )
                    .unwrap();
                    self.bob = Some(bob);
                    self.bob_wake = self.now;
                }
                (Some(bob), s) => bob.handle_signal(self.now, s).unwrap(),
                (None, _) => {}
            }
            self.drain_bob();
        }
        for s in std::mem::take(&mut self.to_alice) {
            self.alice_heard_signals.push(s.clone());
            self.alice.handle_signal(self.now, s).unwrap();
            self.drain_alice();
        }
    }

    /// Runs both sides for `d` of virtual time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.deliver_signals();
            let next_packet = self.link.queue.keys().next().map(|k| k.0);
            let mut next = self.alice_wake;
            if self.bob.is_some() {
                next = next.min(self.bob_wake);
            }
            if let Some(p) = next_packet {
                next = next.min(p);
            }
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            if next_packet == Some(next) {
                let (_, (src, dst, bytes)) = self.link.queue.pop_first().unwrap();
                self.deliver(src, dst, &bytes);
            } else if self.alice_wake == next {
                self.alice.handle_timeout(self.now).unwrap();
                self.drain_alice();
            } else {
                self.bob.as_mut().unwrap().handle_timeout(self.now).unwrap();
                self.drain_bob();
            }
        }
    }

    /// Lets Bob's device ring for 100 ms, then answers.
    fn ring_and_answer(&mut self) {
        self.run(Duration::from_millis(100));
        let now = self.now;
        self.bob().answer(now).unwrap();
        self.drain_bob();
    }

    fn bob(&mut self) -> &mut Call {
        self.bob.as_mut().expect("Bob's device rang")
    }

    fn ended(events: &[CallEvent]) -> Option<(EndReason, Duration)> {
        events.iter().find_map(|e| match e {
            CallEvent::Ended { reason, talked } => Some((*reason, *talked)),
            _ => None,
        })
    }
}

#[test]
fn an_answered_call_carries_each_sides_tone_to_the_other_and_either_can_hang_up() {
    let mut p = Pair::new();
    p.run(Duration::from_millis(100));
    assert_eq!(p.alice.state(), State::Ringing);
    assert_eq!(p.bob().state(), State::Incoming);
    let now = p.now;
    p.bob().answer(now).unwrap();
    p.drain_bob();
    p.run(Duration::from_secs(3));
    assert_eq!(p.alice.state(), State::Active);
    assert_eq!(p.bob().state(), State::Active);
    assert!(p.alice_events.contains(&CallEvent::Connected));
    assert!(p.bob_events.contains(&CallEvent::Connected));

    // Each hears the other's tone: 440 Hz at Bob's, 1000 Hz at Alice's, nearly all of it.
    both_heard(&p, 2.0);

    // Text on the call's data channel.
    let now = p.now;
    assert!(p.alice.send_text(now, "hello from alice").unwrap());
    p.drain_alice();
    p.run(Duration::from_millis(200));
    assert!(
        p.bob_events
            .contains(&CallEvent::Text("hello from alice".into()))
    );

    let now = p.now;
    p.bob().hangup(now);
    p.drain_bob();
    p.run(Duration::from_millis(200));
    let (reason, talked) = Pair::ended(&p.alice_events).expect("Alice's call ended");
    assert_eq!(reason, EndReason::HungUp { by_us: false });
    assert!(
        talked > Duration::from_secs(2) && talked < Duration::from_secs(5),
        "{talked:?}"
    );
    assert_eq!(
        Pair::ended(&p.bob_events).unwrap().0,
        EndReason::HungUp { by_us: true }
    );
}

#[test]
fn unanswered_declined_and_cancelled_calls_end_as_such_on_both_sides() {
    // Nobody answers: the caller gives up after the ring timeout and the callee's ringing
    // stops as a missed call.
    let mut p = Pair::new();
    p.run(RING_TIMEOUT + Duration::from_secs(1));
    assert_eq!(p.alice.state(), State::Ended(EndReason::NoAnswer));
    assert_eq!(p.bob().state(), State::Ended(EndReason::NoAnswer));

    let mut p = Pair::new();
    p.run(Duration::from_millis(100));
    let now = p.now;
    p.bob().decline(now).unwrap();
    p.drain_bob();
    p.run(Duration::from_millis(100));
    assert_eq!(
        p.alice.state(),
        State::Ended(EndReason::Declined { by_us: false })
    );
    assert_eq!(Pair::ended(&p.alice_events).unwrap().1, Duration::ZERO);

    let mut p = Pair::new();
    p.run(Duration::from_millis(100));
    let now = p.now;
    p.alice.hangup(now);
    p.drain_alice();
    p.run(Duration::from_millis(100));
    assert_eq!(p.bob().state(), State::Ended(EndReason::NoAnswer), "missed");
    // Answering a call that is over is refused, not a panic.
    let now = p.now;
    assert!(p.bob().answer(now).is_err());
}

#[test]
fn a_cut_link_ends_a_call_after_the_grace_and_an_answer_without_media_fails_setup() {
    let mut p = Pair::new();
    p.ring_and_answer();
    p.run(Duration::from_secs(2));
    assert_eq!(p.alice.state(), State::Active);
    p.link.cut = true;
    p.link.queue.clear();
    p.run(Duration::from_secs(30));
    assert_eq!(p.alice.state(), State::Ended(EndReason::ConnectionLost));
    assert_eq!(p.bob().state(), State::Ended(EndReason::ConnectionLost));

    // No packet ever gets through: answered, but set-up fails in bounded time.
    let mut p = Pair::new();
    p.link.cut = true;
    p.ring_and_answer();
    p.run(SETUP_TIMEOUT + Duration::from_secs(1));
    assert_eq!(p.alice.state(), State::Ended(EndReason::SetupFailed));
    assert_eq!(p.bob().state(), State::Ended(EndReason::SetupFailed));
}

#[test]
fn garbage_and_hostile_signals_are_refused_without_harm() {
    let mut p = Pair::new();
    p.run(Duration::from_millis(100));
    let now = p.now;
    // Datagrams that are not STUN, DTLS or RTP, before and during the call.
    p.alice
        .handle_packet(now, addr(BOB), addr(ALICE), &[0xde, 0xad, 0xbe, 0xef])
        .unwrap();
    p.alice
        .handle_packet(now, addr(BOB), addr(ALICE), &[0u8; 0])
        .unwrap();
    // Signals for another call id are ignored; a bad SDP in an answer is an error.
    p.alice
        .handle_signal(
            now,
            CallSignal::Hangup {
                call: CallId([9; 16]),
                reason: hestia_protocol::call::HangupReason::Normal,
            },
        )
        .unwrap();
    assert_eq!(p.alice.state(), State::Ringing);
    assert!(
        p.alice
            .handle_signal(
                now,
                CallSignal::Answer {
                    call: CallId([1; 16]),
                    sdp: "not sdp".into()
                }
            )
            .is_err()
    );
    assert!(
        Call::incoming(
            CallId([2; 16]),
            "v=0\r\ngarbage",
            now,
            Route::Direct(vec![addr(BOB)]),
            Box::new(Silence),
            Box::new(Meter::default()),
        )
        .is_err()
    );
}

#[test]
fn ringing_leaks_no_address_and_candidates_go_out_only_after_the_answer() {
    let mut p = Pair::new();
    p.run(Duration::from_millis(100));
    // The offer Bob's device got, and everything Alice sent while it rang: no address.
    assert!(p.to_alice.is_empty());
    assert!(p.link.queue.is_empty(), "no datagram before the answer");
    let now = p.now;
    let mut bob = Call::incoming(
        CallId([3; 16]),
        &{
            let mut a = Call::dial(
                CallId([3; 16]),
                now,
                Route::Direct(vec![addr(ALICE)]),
                Box::new(Silence),
                Box::new(Meter::default()),
            )
            .unwrap();
            let CallOutput::Signal(CallSignal::Offer { sdp, .. }) = a.poll_output() else {
                panic!("an offer first")
            };
            assert!(
                !sdp.contains("10.0.0.1") && !sdp.contains("a=candidate"),
                "{sdp}"
            );
            sdp
        },
        now,
        Route::Direct(vec![addr(BOB)]),
        Box::new(Silence),
        Box::new(Meter::default()),
    )
    .unwrap();
    assert!(
        matches!(bob.poll_output(), CallOutput::Timeout(_)),
        "nothing while ringing"
    );
    bob.answer(now).unwrap();
    let CallOutput::Signal(CallSignal::Answer { sdp, .. }) = bob.poll_output() else {
        panic!("the answer first")
    };
    assert!(!sdp.contains("10.0.0.2"), "{sdp}");
    let CallOutput::Signal(CallSignal::Candidates { candidates, .. }) = bob.poll_output() else {
        panic!("then the candidates")
    };
    assert_eq!(candidates.len(), 1);
    assert!(candidates[0].contains("10.0.0.2"), "{candidates:?}");
}

#[test]
fn a_lossy_link_still_carries_the_tone() {
    let mut p = Pair::new();
    p.link.drop_every = 20; // 5% of datagrams lost, both ways
    p.ring_and_answer();
    p.run(Duration::from_secs(5));
    assert_eq!(p.alice.state(), State::Active);
    let heard = p.heard_by_bob.lock().unwrap().clone();
    assert!(heard.samples > 48_000 * 3, "{heard:?}");
    assert!((heard.frequency_hz() - 440.0).abs() < 30.0, "{heard:?}");
}

#[test]
fn forged_stun_dtls_and_rtp_datagrams_mid_call_do_not_end_it() {
    let mut p = Pair::new();
    p.ring_and_answer();
    p.run(Duration::from_secs(2));
    assert_eq!(p.alice.state(), State::Active);
    let heard = p.heard_by_alice.lock().unwrap().samples;
    // Shaped like STUN, DTLS and RTP, from Bob's address and from a stranger's.
    let stun = [
        &[0x00u8, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42][..],
        &[7; 20],
    ]
    .concat();
    let dtls = [
        &[0x16u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 40][..],
        &[9; 40],
    ]
    .concat();
    let rtp = [
        &[0x80u8, 111, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef][..],
        &[3; 60],
    ]
    .concat();
    for from in [addr(BOB), addr("10.9.9.9:9999")] {
        for d in [&stun, &dtls, &rtp] {
            let now = p.now;
            p.alice.handle_packet(now, from, addr(ALICE), d).unwrap();
            p.drain_alice();
        }
    }
    p.run(Duration::from_secs(2));
    assert_eq!(p.alice.state(), State::Active);
    assert!(
        p.heard_by_alice.lock().unwrap().samples > heard + 48_000,
        "audio went on"
    );
}

/// Asserts each side heard the other's tone for about `secs` seconds.
fn both_heard(p: &Pair, secs: f64) {
    let bob_heard = p.heard_by_bob.lock().unwrap().clone();
    let alice_heard = p.heard_by_alice.lock().unwrap().clone();
    let want = (48_000.0 * secs) as u64;
    assert!(bob_heard.samples > want, "{bob_heard:?}");
    assert!(alice_heard.samples > want, "{alice_heard:?}");
    assert!(
        (bob_heard.frequency_hz() - 440.0).abs() < 25.0,
        "{bob_heard:?}"
    );
    assert!(
        (alice_heard.frequency_hz() - 1000.0).abs() < 40.0,
        "{alice_heard:?}"
    );
}

#[test]
fn a_relayed_call_carries_both_tones_and_neither_device_learns_the_others_address() {
    let mut p = Pair::relayed();
    p.ring_and_answer();
    p.run(Duration::from_secs(3));
    assert_eq!(p.alice.state(), State::Active);
    assert_eq!(p.bob().state(), State::Active);
    both_heard(&p, 2.0);

    // Each device talked only with its own node's relay, both ways.
    let (alice, bob) = (addr(ALICE_DEVICE), addr(BOB_DEVICE));
    let (alice_relay, bob_relay) = (addr(ALICE_RELAY), addr(BOB_RELAY));
    for (src, dst) in &p.link.seen {
        if *src == alice || *dst == alice {
            assert!(*src == alice_relay || *dst == alice_relay, "{src} → {dst}");
        }
        if *src == bob || *dst == bob {
            assert!(*src == bob_relay || *dst == bob_relay, "{src} → {dst}");
        }
    }
    // The candidates Alice received name Bob's relay, never Bob's device.
    let lines: Vec<&String> = p
        .alice_heard_signals
        .iter()
        .flat_map(|s| match s {
            CallSignal::Candidates { candidates, .. } => candidates.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l.contains("typ relay") && l.contains("127.0.0.12"), "{l}");
        assert!(!l.contains("127.0.0.22"), "{l}");
    }

    // Hanging up frees both allocations at once.
    let now = p.now;
    p.alice.hangup(now);
    p.drain_alice();
    p.run(Duration::from_millis(200));
    assert_eq!(
        Pair::ended(&p.bob_events).unwrap().0,
        EndReason::HungUp { by_us: false }
    );
    assert_eq!(p.relays[0].server.stats().allocations, 0);
    assert_eq!(p.relays[1].server.stats().allocations, 0);
}

#[test]
fn a_relayed_call_survives_loss_and_a_candidate_outside_the_relay_is_refused() {
    let mut p = Pair::relayed();
    p.link.drop_every = 25; // 4% of datagrams lost, relay traffic included
    p.ring_and_answer();
    // A modified client of Bob's adds a candidate on a private network: Alice's relay
    // refuses to reach it, and the call goes on through the relays.
    p.run(Duration::from_millis(50));
    let call = p.alice.id();
    p.to_alice.push(CallSignal::Candidates {
        call,
        candidates: vec!["candidate:1 1 udp 2130706431 10.9.8.7 9999 typ host".into()],
    });
    p.run(Duration::from_secs(4));
    assert_eq!(p.alice.state(), State::Active);
    both_heard(&p, 2.0);
    assert!(
        !p.link
            .seen
            .iter()
            .any(|(_, d)| d.ip().to_string() == "10.9.8.7"),
        "nothing was sent toward the private address"
    );
}

#[test]
fn a_relay_that_never_answers_ends_the_call_and_the_callees_ringing() {
    let mut p = Pair::relayed();
    p.relays.remove(0); // Alice's node's relay is gone: her datagrams go nowhere
    p.run(Duration::from_secs(10));
    let (reason, _) = Pair::ended(&p.alice_events).expect("Alice's call ended");
    assert_eq!(reason, EndReason::RelayFailed(TurnError::Unreachable));
    assert_eq!(
        p.bob().state(),
        State::Ended(EndReason::NoAnswer),
        "a missed call"
    );
}
