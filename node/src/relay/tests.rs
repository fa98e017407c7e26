//! The relay core's tests: two cores over in-memory stores, driven as the driver drives them.

use super::*;
use hestia_protocol::identity::IdentityKey;
use hestia_protocol::wire::{ClientAuth, Outgoing};
use hestia_store::node::{MemNodeStore, NodeStore};

mod admin;

pub(super) const T0: Millis = 1_700_000_000_000;

pub(super) struct Harness {
    rng: rand::rngs::StdRng,
    pub(super) alice: IdentityKey,
    pub(super) bob: IdentityKey,
    pub(super) a: Core,
    pub(super) b: Core,
    pub(super) store_a: MemNodeStore,
    pub(super) store_b: MemNodeStore,
    next_token: u64,
    /// Federation requests node A emitted while a test looked only at client answers.
    stash: Vec<(BatchId, String, FedRequest)>,
    /// Wake-ups either node handed out, in order.
    pub(super) wakes: Vec<(super::WakeId, hestia_protocol::push::Subscription)>,
    /// Endpoint checks either node asked for, in order.
    pub(super) checks: Vec<(Token, String)>,
    /// Admin answers either node gave, in order.
    pub(super) admin: Vec<AdminResponse>,
}

fn config(id: &str) -> Config {
    Config {
        node_id: id.into(),
        registration: Registration::Open,
        seed: 7,
        limits: Limits::default(),
        push: super::PushConfig {
            vapid_key: Some(vec![4; 65]),
            allow_loopback: false,
            max_delay_ms: 0,
        },
        turn: None,
    }
}

fn core(id: &str, snap: NodeSnapshot, now: Millis) -> Core {
    Core::new(config(id), snap, now)
}

/// A core restarted from what `store` holds.
pub(super) fn restarted(id: &str, store: &MemNodeStore, now: Millis) -> Core {
    Core::from_store(config(id), store, now).unwrap()
}

fn mailbox_of(store: &MemNodeStore) -> Vec<MailboxEntry> {
    let mut out = Vec::new();
    store.for_each_mailbox(&mut |e| out.push(e)).unwrap();
    out
}

impl Harness {
    pub(super) fn new() -> Harness {
        let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(11);
        let alice = IdentityKey::generate(&mut rng);
        let bob = IdentityKey::generate(&mut rng);
        let mut h = Harness {
            rng,
            alice,
            bob,
            a: core("NodeA", NodeSnapshot::default(), T0),
            b: core("NodeB", NodeSnapshot::default(), T0),
            store_a: MemNodeStore::default(),
            store_b: MemNodeStore::default(),
            next_token: 0,
            stash: Vec::new(),
            wakes: Vec::new(),
            checks: Vec::new(),
            admin: Vec::new(),
        };
        assert_eq!(
            h.client(true, T0, ClientOp::Register),
            vec![ClientResponse::Registered]
        );
        assert_eq!(
            h.client(false, T0, ClientOp::Register),
            vec![ClientResponse::Registered]
        );
        h
    }

    /// Alice's client talks to node A; Bob's to node B.
    pub(super) fn client(&mut self, alice: bool, now: Millis, op: ClientOp) -> Vec<ClientResponse> {
        let (key, node) = if alice {
            (&self.alice, "NodeA")
        } else {
            (&self.bob, "NodeB")
        };
        let auth = ClientAuth::sign(key, node, "device", now, &op).unwrap();
        self.next_token += 1;
        let core = if alice { &mut self.a } else { &mut self.b };
        core.handle_client(
            now,
            Token(self.next_token),
            "device",
            ClientRequest {
                auth: Auth::Signed(Box::new(auth)),
                op,
            },
        );
        let (reqs, _, out) = self.drain(alice);
        self.stash.extend(reqs);
        out
    }

    /// Alice sends one envelope to Bob's node; returns her node's answer.
    pub(super) fn send_to_b(&mut self, now: Millis, envelope: Envelope) -> Vec<ClientResponse> {
        let to_node = "NodeB".into();
        self.client(
            true,
            now,
            ClientOp::Send(vec![Outgoing { to_node, envelope }]),
        )
    }

    /// Applies writes, then returns fed requests, fed responses and client responses.
    #[allow(clippy::type_complexity)]
    pub(super) fn drain(
        &mut self,
        a: bool,
    ) -> (
        Vec<(BatchId, String, FedRequest)>,
        Vec<FedResponse>,
        Vec<ClientResponse>,
    ) {
        let (core, store) = if a {
            (&mut self.a, &mut self.store_a)
        } else {
            (&mut self.b, &mut self.store_b)
        };
        store.apply(&core.take_writes()).unwrap();
        let mut reqs = if a {
            std::mem::take(&mut self.stash)
        } else {
            Vec::new()
        };
        let mut fed = Vec::new();
        let mut cl = Vec::new();
        while let Some(o) = core.poll_output() {
            match o.load(&*store).unwrap() {
                Ready::Client { response, .. } => cl.push(response),
                Ready::FedResponse { response, .. } => fed.push(response),
                Ready::FedRequest {
                    batch,
                    to_node,
                    request,
                } => reqs.push((batch, to_node, request)),
                Ready::Wake { wake, target } => self.wakes.push((wake, target)),
                Ready::CheckEndpoint { token, endpoint } => self.checks.push((token, endpoint)),
                Ready::Admin { response, .. } => self.admin.push(response),
            }
        }
        (reqs, fed, cl)
    }

    /// An envelope to Bob. The relay never looks inside a body, so any bytes do.
    pub(super) fn letter(&mut self, text: &str, now: Millis, ttl: Millis) -> Envelope {
        Envelope::seal_body(
            &mut self.rng,
            &self.bob.user_id(),
            text.as_bytes(),
            now,
            ttl,
        )
        .unwrap()
    }

    /// Delivers node A's pending fed requests to node B and B's answers back to A.
    pub(super) fn pump(&mut self, now: Millis) -> usize {
        let (reqs, _, _) = self.drain(true);
        let n = reqs.len();
        for (batch, to, req) in reqs {
            assert_eq!(to, "NodeB");
            self.b.handle_fed_request(now, Token(0), "NodeA", req);
            let (_, mut answers, _) = self.drain(false);
            self.a
                .handle_fed_response(now, batch, Ok(answers.remove(0)));
        }
        n
    }
}

#[test]
fn offline_recipient_gets_message_on_fetch_and_ack_removes_it() {
    let mut h = Harness::new();
    let e = h.letter("hello", T0, 60_000);
    let r = h.send_to_b(T0, e.clone());
    assert_eq!(r, vec![ClientResponse::Sent(vec![SendResult::Queued])]);
    assert_eq!(h.pump(T0), 1);
    let st = h.client(true, T0, ClientOp::Status(vec![e.id]));
    assert_eq!(
        st,
        vec![ClientResponse::Status(vec![
            DeliveryState::DeliveredToNode { at: T0 }
        ])]
    );
    assert!(h.store_a.load().unwrap().outbox.is_empty());
    assert_eq!(mailbox_of(&h.store_b), vec![MailboxEntry::of(&e)]);
    let got = h.client(
        false,
        T0 + 5,
        ClientOp::Fetch {
            limit: 10,
            wait_ms: 0,
        },
    );
    assert_eq!(got, vec![ClientResponse::Envelopes(vec![e.clone()])]);
    assert_eq!(e.open_body(&h.bob).unwrap(), b"hello");
    let acked = h.client(false, T0 + 6, ClientOp::Ack(vec![e.id]));
    assert_eq!(acked, vec![ClientResponse::Acked { removed: 1 }]);
    assert!(mailbox_of(&h.store_b).is_empty());
    // A retransmission after the ack is a duplicate, not a second delivery.
    h.b.handle_fed_request(T0 + 7, Token(0), "NodeA", FedRequest::Deliver(vec![e]));
    let (_, fed, _) = h.drain(false);
    assert_eq!(
        fed,
        vec![FedResponse::Delivered(vec![DeliverResult::Duplicate])]
    );
}

#[test]
fn unreachable_node_is_retried_with_backoff_then_delivered() {
    let mut h = Harness::new();
    let e = h.letter("later", T0, 600_000);
    h.send_to_b(T0, e.clone());
    let (reqs, _, _) = h.drain(true);
    h.a.handle_fed_response(T0, reqs[0].0, Err(FedFailure::Unreachable));
    let first = h.a.poll_timeout().unwrap();
    assert!(first > T0 && first <= T0 + RETRY_BASE_MS);
    h.a.handle_timeout(first);
    let (reqs, _, _) = h.drain(true);
    h.a.handle_fed_response(first, reqs[0].0, Err(FedFailure::Timeout));
    let second = h.a.poll_timeout().unwrap();
    assert!(second - first > first - T0, "backoff grows");
    let st = h.client(true, second, ClientOp::Status(vec![e.id]));
    assert_eq!(
        st,
        vec![ClientResponse::Status(vec![DeliveryState::Queued {
            attempts: 2
        }])]
    );
    h.a.handle_timeout(second);
    assert_eq!(h.pump(second), 1);
    assert_eq!(mailbox_of(&h.store_b).len(), 1);
}

#[test]
fn restart_from_store_resumes_outbox_and_mailbox() {
    let mut h = Harness::new();
    let e = h.letter("survives", T0, 600_000);
    h.send_to_b(T0, e.clone());
    // Node A crashes with the batch in flight: rebuild it from its store.
    h.stash.clear();
    h.a = restarted("NodeA", &h.store_a, T0 + 10);
    h.a.handle_timeout(T0 + 10);
    assert_eq!(h.pump(T0 + 10), 1);
    // Node B crashes after storing: the envelope is still there.
    h.b = restarted("NodeB", &h.store_b, T0 + 20);
    let got = h.client(
        false,
        T0 + 20,
        ClientOp::Fetch {
            limit: 10,
            wait_ms: 0,
        },
    );
    assert_eq!(got, vec![ClientResponse::Envelopes(vec![e])]);
}

#[test]
fn expiry_removes_from_outbox_and_mailbox_and_reports_expired() {
    let mut h = Harness::new();
    let e1 = h.letter("a", T0, 1_000);
    let e2 = h.letter("b", T0, 1_000);
    h.send_to_b(T0, e1.clone());
    let (reqs, _, _) = h.drain(true);
    h.a.handle_fed_response(T0, reqs[0].0, Err(FedFailure::Unreachable));
    h.b.handle_fed_request(T0, Token(0), "NodeA", FedRequest::Deliver(vec![e2.clone()]));
    h.drain(false);
    h.a.handle_timeout(T0 + 1_000);
    h.b.handle_timeout(T0 + 1_000);
    h.drain(true);
    h.drain(false);
    assert!(h.store_a.load().unwrap().outbox.is_empty());
    assert!(mailbox_of(&h.store_b).is_empty());
    let st = h.client(true, T0 + 1_001, ClientOp::Status(vec![e1.id]));
    assert_eq!(
        st,
        vec![ClientResponse::Status(vec![DeliveryState::Expired])]
    );
}

#[test]
fn unknown_recipient_and_bad_auth_get_clear_answers() {
    let mut h = Harness::new();
    let stranger = IdentityKey::generate(&mut h.rng);
    let e = Envelope::seal_body(&mut h.rng, &stranger.user_id(), b"?", T0, 60_000).unwrap();
    h.send_to_b(T0, e.clone());
    h.pump(T0);
    let st = h.client(true, T0, ClientOp::Status(vec![e.id]));
    assert_eq!(
        st,
        vec![ClientResponse::Status(vec![DeliveryState::NoSuchUser])]
    );
    // Another user cannot read Alice's delivery states.
    let st = h.client(false, T0, ClientOp::Status(vec![e.id]));
    assert_eq!(
        st,
        vec![ClientResponse::Status(vec![DeliveryState::Unknown])]
    );
    // A request signed for another node is refused.
    let op = ClientOp::Fetch {
        limit: 1,
        wait_ms: 0,
    };
    let auth = ClientAuth::sign(&h.bob, "NodeA", "device", T0, &op).unwrap();
    h.b.handle_client(
        T0,
        Token(99),
        "device",
        ClientRequest {
            auth: Auth::Signed(Box::new(auth)),
            op,
        },
    );
    let (_, _, cl) = h.drain(false);
    assert_eq!(cl, vec![ClientResponse::Error(ClientError::BadAuth)]);
}

/// A request to node A from another local user's device.
fn call_a(h: &mut Harness, key: &IdentityKey, now: Millis, op: ClientOp) -> Vec<ClientResponse> {
    let auth = ClientAuth::sign(key, "NodeA", "other-device", now, &op).unwrap();
    h.next_token += 1;
    let req = ClientRequest {
        auth: Auth::Signed(Box::new(auth)),
        op,
    };
    h.a.handle_client(now, Token(h.next_token), "other-device", req);
    h.drain(true).2
}

fn send_op(to_node: &str, envelope: Envelope) -> ClientOp {
    ClientOp::Send(vec![Outgoing {
        to_node: to_node.into(),
        envelope,
    }])
}

#[test]
fn ids_chosen_by_one_user_never_touch_another_users_records() {
    let mut h = Harness::new();
    let mallory = IdentityKey::generate(&mut h.rng);
    assert_eq!(
        call_a(&mut h, &mallory, T0, ClientOp::Register),
        vec![ClientResponse::Registered]
    );
    let (alice, m) = (h.alice.user_id(), mallory.user_id());
    let to = |mut e: Envelope, user: UserId| {
        e.recipient = user;
        e
    };
    // Alice writes to Mallory (same node); Mallory reuses the id, writing to Alice.
    let e = to(h.letter("x", T0, 60_000), m);
    let sent = h.client(true, T0, send_op("NodeA", e.clone()));
    assert_eq!(
        sent,
        vec![ClientResponse::Sent(vec![SendResult::DeliveredToNode])]
    );
    let reuse = to(e.clone(), alice);
    let sent = call_a(&mut h, &mallory, T0, send_op("NodeA", reuse.clone()));
    assert_eq!(
        sent,
        vec![ClientResponse::Sent(vec![SendResult::DeliveredToNode])]
    );
    // Both mailboxes hold their envelope: the id did not shadow the other recipient's.
    let fetch = ClientOp::Fetch {
        limit: 10,
        wait_ms: 0,
    };
    assert_eq!(
        h.client(true, T0, fetch.clone()),
        vec![ClientResponse::Envelopes(vec![reuse])]
    );
    assert_eq!(
        call_a(&mut h, &mallory, T0, fetch),
        vec![ClientResponse::Envelopes(vec![e.clone()])]
    );
    // Alice's delivery record is still hers.
    assert!(matches!(
        h.client(true, T0, ClientOp::Status(vec![e.id])).as_slice(),
        [ClientResponse::Status(s)] if matches!(s[..], [DeliveryState::DeliveredToNode { .. }])
    ));
    // An id Alice has queued (NodeC does not answer) cannot be queued by Mallory elsewhere.
    let q = h.letter("q", T0, 60_000);
    let sent = h.client(true, T0, send_op("NodeC", q.clone()));
    assert_eq!(sent, vec![ClientResponse::Sent(vec![SendResult::Queued])]);
    let sent = call_a(&mut h, &mallory, T0, send_op("NodeD", q.clone()));
    assert_eq!(sent, vec![ClientResponse::Sent(vec![SendResult::Invalid])]);
    let sent = call_a(&mut h, &mallory, T0, send_op("NodeC", q.clone()));
    assert_eq!(sent, vec![ClientResponse::Sent(vec![SendResult::Invalid])]);
    assert!(matches!(
        h.client(true, T0, ClientOp::Status(vec![q.id])).as_slice(),
        [ClientResponse::Status(s)] if matches!(s[..], [DeliveryState::Queued { .. }])
    ));
    // Alice's own retry is a duplicate, as before.
    let sent = h.client(true, T0, send_op("NodeC", q));
    assert_eq!(sent, vec![ClientResponse::Sent(vec![SendResult::Queued])]);
}

#[test]
fn each_local_user_has_its_own_allowance_for_a_local_contacts_one_time_prekeys() {
    use hestia_protocol::session::prekeys::PrekeySecrets;
    let mut h = Harness::new();
    let mut secrets = PrekeySecrets::new(&mut h.rng, &h.alice, T0);
    let publish = ClientOp::PublishPrekeys {
        signed: Box::new(secrets.current_signed().clone()),
        one_time: secrets.generate_one_time(&mut h.rng, 40, T0),
    };
    h.client(true, T0, publish);
    let fetch = ClientOp::FetchBundle {
        user: h.alice.user_id(),
        node: "NodeA".into(),
    };
    let with_otk = |h: &mut Harness, key: &IdentityKey, n: usize| {
        (0..n)
            .filter(|_| {
                matches!(call_a(h, key, T0, fetch.clone()).as_slice(),
                    [ClientResponse::Bundle(b)] if b.one_time.is_some())
            })
            .count() as u32
    };
    let (mallory, carol) = (
        IdentityKey::generate(&mut h.rng),
        IdentityKey::generate(&mut h.rng),
    );
    call_a(&mut h, &mallory, T0, ClientOp::Register);
    call_a(&mut h, &carol, T0, ClientOp::Register);
    // Mallory spends her own allowance, not Carol's.
    assert_eq!(
        with_otk(&mut h, &mallory, 15),
        ONE_TIME_PREKEYS_PER_NODE_PER_HOUR
    );
    assert_eq!(with_otk(&mut h, &carol, 1), 1);
}

#[test]
fn a_remote_node_delivering_faster_than_its_allowance_is_refused_typed_then_let_through() {
    let mut h = Harness::new();
    let limit = h.b.config.limits.fed;
    let batch = |h: &mut Harness, n: usize| -> Vec<Envelope> {
        (0..n).map(|_| h.letter("x", T0, 3_600_000)).collect()
    };
    let mut delivered = 0u64;
    let mut t = 0;
    while delivered < limit.burst {
        let envs = batch(&mut h, MAX_BATCH_ENVELOPES);
        h.b.handle_fed_request(T0, Token(t), "NodeX", FedRequest::Deliver(envs));
        t += 1;
        let (_, answers, _) = h.drain(false);
        match answers.as_slice() {
            [FedResponse::Delivered(r)] => delivered += r.len() as u64,
            other => panic!("refused within the burst after {delivered}: {other:?}"),
        }
        if delivered + MAX_BATCH_ENVELOPES as u64 > limit.burst {
            break;
        }
    }
    // Past the burst: a typed refusal that says when to come back; nothing was stored.
    let before = h.b.stats().mailbox_envelopes;
    let envs = batch(&mut h, MAX_BATCH_ENVELOPES);
    h.b.handle_fed_request(T0, Token(t), "NodeX", FedRequest::Deliver(envs.clone()));
    let (_, answers, _) = h.drain(false);
    let [FedResponse::Refused(Refusal::RateLimited { retry_after_ms })] = answers.as_slice() else {
        panic!("{answers:?}")
    };
    assert_eq!(h.b.stats().mailbox_envelopes, before);
    // Another node is not affected, and after the wait the first is let through.
    h.b.handle_fed_request(
        T0,
        Token(t + 1),
        "NodeY",
        FedRequest::Deliver(envs[..1].to_vec()),
    );
    assert!(matches!(
        h.drain(false).1.as_slice(),
        [FedResponse::Delivered(_)]
    ));
    let later = T0 + *retry_after_ms as u64;
    h.b.handle_fed_request(later, Token(t + 2), "NodeX", FedRequest::Deliver(envs));
    assert!(matches!(
        h.drain(false).1.as_slice(),
        [FedResponse::Delivered(_)]
    ));
}

#[test]
fn a_users_mailbox_stops_at_its_byte_share_and_others_still_receive() {
    let mut h = Harness::new();
    let mallory = IdentityKey::generate(&mut h.rng);
    call_a(&mut h, &mallory, T0, ClientOp::Register);
    let big = |to: UserId, n: u64| Envelope {
        version: hestia_protocol::envelope::ENVELOPE_VERSION,
        id: EnvelopeId({
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&n.to_be_bytes());
            b
        }),
        recipient: to,
        expires_at: T0 + 3_600_000,
        body: vec![0; 16_000],
    };
    let alice = h.alice.user_id();
    let (mut accepted, mut n) = (0u64, 0u64);
    'fill: loop {
        let envs: Vec<Envelope> = (0..MAX_BATCH_ENVELOPES as u64)
            .map(|i| big(alice, n + i))
            .collect();
        n += envs.len() as u64;
        h.a.handle_fed_request(T0, Token(n), "NodeX", FedRequest::Deliver(envs));
        let (_, answers, _) = h.drain(true);
        let [FedResponse::Delivered(results)] = answers.as_slice() else {
            panic!("{answers:?}")
        };
        for r in results {
            match r {
                DeliverResult::Accepted => accepted += 1,
                DeliverResult::MailboxFull => break 'fill,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(accepted, MAX_MAILBOX_BYTES / 16_000);
    assert!(h.a.stats().stored_bytes <= MAX_MAILBOX_BYTES);
    // Mallory's share is untouched.
    h.a.handle_fed_request(
        T0,
        Token(0),
        "NodeX",
        FedRequest::Deliver(vec![big(mallory.user_id(), u64::MAX)]),
    );
    assert_eq!(
        h.drain(true).1,
        vec![FedResponse::Delivered(vec![DeliverResult::Accepted])]
    );
}

#[test]
fn one_user_cannot_hold_the_parked_fetch_table_and_closed_connections_free_theirs() {
    let mut h = Harness::new();
    let wait = ClientOp::Fetch {
        limit: 10,
        wait_ms: 30_000,
    };
    for i in 0..MAX_PARKED_PER_USER {
        assert!(h.client(false, T0 + i as u64, wait.clone()).is_empty());
    }
    assert_eq!(h.b.stats().parked_fetches, MAX_PARKED_PER_USER);
    // One more: the user's oldest wait ends empty, the new one is held; the table does not
    // grow past the user's share.
    let answered = h.client(false, T0 + 10, wait.clone());
    assert_eq!(answered, vec![ClientResponse::Envelopes(vec![])]);
    assert_eq!(h.b.stats().parked_fetches, MAX_PARKED_PER_USER);
    // The connection closes: its waits go with it.
    h.b.handle_client_disconnected("device");
    let (_, _, cl) = h.drain(false);
    assert_eq!(cl.len(), MAX_PARKED_PER_USER);
    assert_eq!(h.b.stats().parked_fetches, 0);
}

#[test]
fn parked_fetch_wakes_on_arrival_and_times_out_empty() {
    let mut h = Harness::new();
    let r = h.client(
        false,
        T0,
        ClientOp::Fetch {
            limit: 10,
            wait_ms: 1_000,
        },
    );
    assert!(r.is_empty(), "held open");
    assert_eq!(h.b.poll_timeout(), Some(T0 + 1_000));
    let e = h.letter("live", T0, 60_000);
    h.b.handle_fed_request(
        T0 + 3,
        Token(0),
        "NodeA",
        FedRequest::Deliver(vec![e.clone()]),
    );
    let (_, fed, cl) = h.drain(false);
    assert_eq!(fed.len(), 1);
    assert_eq!(cl, vec![ClientResponse::Envelopes(vec![e])]);
    let r = h.client(
        false,
        T0 + 4,
        ClientOp::Fetch {
            limit: 10,
            wait_ms: 0,
        },
    );
    assert_eq!(r.len(), 1, "not acked yet: still held");
}

#[test]
fn envelopes_sent_while_the_window_is_full_leave_together() {
    let mut h = Harness::new();
    for i in 0..MAX_IN_FLIGHT_PER_NODE {
        let e = h.letter(&format!("w{i}"), T0, 60_000);
        h.send_to_b(T0, e);
    }
    let (reqs, _, _) = h.drain(true);
    assert_eq!(
        reqs.len(),
        MAX_IN_FLIGHT_PER_NODE,
        "one batch per send while the window has room"
    );
    for i in 0..10 {
        let e = h.letter(&i.to_string(), T0, 60_000);
        h.send_to_b(T0, e);
    }
    assert!(h.drain(true).0.is_empty(), "window full: nothing leaves");
    h.b.handle_fed_request(T0, Token(0), "NodeA", reqs[0].2.clone());
    let (_, mut answers, _) = h.drain(false);
    h.a.handle_fed_response(T0, reqs[0].0, Ok(answers.remove(0)));
    let (next, _, _) = h.drain(true);
    assert_eq!(next.len(), 1);
    let FedRequest::Deliver(envs) = &next[0].2 else {
        panic!("a delivery batch")
    };
    assert_eq!(
        envs.len(),
        10,
        "the ten gathered while the window was full leave in one batch"
    );
}

#[test]
fn a_sending_node_is_held_to_its_stored_quota() {
    let mut h = Harness::new(); // Bob registered on node B
    let size = h.letter("q", T0, 60_000).body.len() as u64;
    let mut cfg = config("NodeB");
    cfg.limits.stored_per_node = 3 * size;
    h.b = Core::from_store(cfg, &h.store_b, T0).unwrap();
    let envs: Vec<Envelope> = (0..4)
        .map(|i| h.letter(&format!("q{i}"), T0, 60_000))
        .collect();
    let deliver = |h: &mut Harness, from: &str, envs: Vec<Envelope>| {
        h.b.handle_fed_request(T0, Token(0), from, FedRequest::Deliver(envs));
        h.drain(false).1
    };
    use DeliverResult::{Accepted, MailboxFull};
    assert_eq!(
        deliver(&mut h, "NodeX", envs.clone()),
        vec![FedResponse::Delivered(vec![
            Accepted,
            Accepted,
            Accepted,
            MailboxFull
        ])],
        "the fourth is past NodeX's quota"
    );
    assert_eq!(h.b.stored_from("NodeX"), 3 * size);
    let other = h.letter("other", T0, 60_000);
    assert_eq!(
        deliver(&mut h, "NodeY", vec![other]),
        vec![FedResponse::Delivered(vec![Accepted])],
        "another node is not held back by NodeX's quota"
    );
    // Bob reads and acknowledges: the room comes back.
    let fetched = h.client(
        false,
        T0,
        ClientOp::Fetch {
            limit: 10,
            wait_ms: 0,
        },
    );
    let [ClientResponse::Envelopes(got)] = &fetched[..] else {
        panic!("{fetched:?}")
    };
    assert_eq!(got.len(), 4);
    let ids = got.iter().map(|e| e.id).collect();
    h.client(false, T0, ClientOp::Ack(ids));
    assert_eq!(h.b.stored_from("NodeX"), 0);
    assert_eq!(
        deliver(&mut h, "NodeX", vec![envs[3].clone()]),
        vec![FedResponse::Delivered(vec![Accepted])]
    );
}

#[test]
fn bytes_in_flight_are_bounded_across_destinations() {
    let mut h = Harness::new();
    // 16 KiB bodies to many destinations, one envelope each: every destination's own
    // window has room, so only the node-wide byte bound holds them back.
    let body = vec![7u8; 16_000];
    let per_env = h.letter("x", T0, 60_000).body.len().max(16_000);
    let destinations = MAX_IN_FLIGHT_BYTES / per_env + 50;
    let mut sent = 0;
    for chunk in (0..destinations).collect::<Vec<_>>().chunks(100) {
        let outgoing = chunk
            .iter()
            .map(|i| Outgoing {
                to_node: format!("Node{i}"),
                envelope: Envelope::seal_body(&mut h.rng, &h.bob.user_id(), &body, T0, 60_000)
                    .unwrap(),
            })
            .collect();
        let r = h.client(true, T0, ClientOp::Send(outgoing));
        assert!(matches!(&r[..], [ClientResponse::Sent(_)]), "{r:?}");
        sent += chunk.len();
    }
    assert_eq!(sent, destinations);
    let (reqs, _, _) = h.drain(true);
    let bytes = |reqs: &[(BatchId, String, FedRequest)]| -> usize {
        reqs.iter()
            .map(|(_, _, r)| match r {
                FedRequest::Deliver(envs) => envs.iter().map(|e| e.body.len()).sum(),
                _ => 0,
            })
            .sum()
    };
    let held = bytes(&reqs);
    assert!(
        held <= MAX_IN_FLIGHT_BYTES + per_env,
        "{held} bytes in flight"
    );
    assert!(reqs.len() < destinations, "some destinations wait");
    assert_eq!(h.a.stats().in_flight_batches, reqs.len());
    // One answer (a failure, even) frees room, and a waiting destination goes.
    h.a.handle_fed_response(T0, reqs[0].0, Err(FedFailure::Unreachable));
    let (next, _, _) = h.drain(true);
    assert_eq!(next.len(), 1, "one more batch fits");
    assert_ne!(next[0].1, reqs[0].1, "a destination that was waiting");
}

#[test]
fn a_signed_request_opens_a_session_for_that_connection_only() {
    let mut h = Harness::new(); // Bob registered with a signed request from "device"
    let fetch = || ClientOp::Fetch {
        limit: 10,
        wait_ms: 0,
    };
    let ask = |h: &mut Harness, peer: &str, user: UserId| {
        let req = ClientRequest {
            auth: Auth::Session(user),
            op: fetch(),
        };
        h.b.handle_client(T0, Token(7), peer, req);
        h.drain(false).2
    };
    let bob = h.bob.user_id();
    assert_eq!(
        ask(&mut h, "device", bob),
        vec![ClientResponse::Envelopes(vec![])]
    );
    // Another connection, or another user on this one, has no session.
    let unknown = vec![ClientResponse::Error(ClientError::SessionUnknown)];
    assert_eq!(ask(&mut h, "other-device", bob), unknown);
    let alice = h.alice.user_id();
    assert_eq!(ask(&mut h, "device", alice), unknown);
    // The session ends with the connection.
    h.b.handle_client_disconnected("device");
    assert_eq!(ask(&mut h, "device", bob), unknown);
}

#[test]
fn prekeys_are_published_handed_out_once_and_fetched_across_federation() {
    use hestia_protocol::session::prekeys::PrekeySecrets;
    let mut h = Harness::new();
    let mut secrets = PrekeySecrets::new(&mut h.rng, &h.bob, T0);
    let otks = secrets.generate_one_time(&mut h.rng, 2, 0);
    let publish = ClientOp::PublishPrekeys {
        signed: Box::new(secrets.current_signed().clone()),
        one_time: otks.clone(),
    };
    assert_eq!(
        h.client(false, T0, publish),
        vec![ClientResponse::Prekeys {
            one_time: 2,
            low: true
        }]
    );
    // A signed prekey signed by someone else is refused.
    let forged = PrekeySecrets::new(&mut h.rng, &h.alice, T0);
    let bad = ClientOp::PublishPrekeys {
        signed: Box::new(forged.current_signed().clone()),
        one_time: vec![],
    };
    assert_eq!(
        h.client(false, T0, bad),
        vec![ClientResponse::Error(ClientError::BadPrekeys)]
    );
    // Alice asks her node for Bob's bundle; her node asks Bob's.
    let bob = h.bob.user_id();
    let fetch = ClientOp::FetchBundle {
        user: bob,
        node: "NodeB".into(),
    };
    let mut handed_out = Vec::new();
    for round in 0..3 {
        assert!(
            h.client(true, T0, fetch.clone()).is_empty(),
            "waits for node B"
        );
        let (batch, to, req) = h.stash.pop().expect("a request to node B");
        assert_eq!(to, "NodeB");
        h.b.handle_fed_request(T0, Token(100 + round), "NodeA", req);
        let (_, mut answers, _) = h.drain(false);
        h.a.handle_fed_response(T0, batch, Ok(answers.remove(0)));
        let (_, _, got) = h.drain(true);
        let [ClientResponse::Bundle(b)] = got.as_slice() else {
            panic!("{got:?}")
        };
        assert_eq!(b.identity, bob);
        assert_eq!(&b.signed_prekey, secrets.current_signed());
        handed_out.push(b.one_time);
    }
    // Each one-time prekey went out once; then bundles come without one.
    handed_out.sort();
    let mut want: Vec<_> = otks.iter().copied().map(Some).collect();
    want.push(None);
    want.sort();
    assert_eq!(handed_out, want);
    // And that survives a restart: the store no longer holds them.
    let snap = h.store_b.load().unwrap();
    assert!(snap.one_time_prekeys.is_empty());
    assert_eq!(snap.signed_prekeys.len(), 1);
    // A node fetching in a loop gets bundles without one-time prekeys once its hourly
    // allowance for this user is spent; the rest of the pool stays for others.
    let more = secrets.generate_one_time(&mut h.rng, 20, 0);
    let publish = ClientOp::PublishPrekeys {
        signed: Box::new(secrets.current_signed().clone()),
        one_time: more,
    };
    h.client(false, T0, publish);
    let mut with_otk = 0;
    for i in 0..15 {
        h.b.handle_fed_request(T0, Token(200 + i), "NodeC", FedRequest::FetchBundle(bob));
        let (_, answers, _) = h.drain(false);
        if let [FedResponse::Bundle(Some(b))] = answers.as_slice() {
            with_otk += b.one_time.is_some() as u32;
        }
    }
    assert_eq!(with_otk, ONE_TIME_PREKEYS_PER_NODE_PER_HOUR);
    h.b.handle_fed_request(
        T0 + HOUR_MS,
        Token(300),
        "NodeC",
        FedRequest::FetchBundle(bob),
    );
    let (_, answers, _) = h.drain(false);
    assert!(
        matches!(answers.as_slice(), [FedResponse::Bundle(Some(b))] if b.one_time.is_some()),
        "a new hour, a new allowance"
    );
    // A drain from many fresh peer ids (each a free key pair) stops at the per-user bound
    // for the hour; everyone still gets a bundle, and the rest of the pool stays.
    let pool = secrets.generate_one_time(&mut h.rng, 150, 0);
    let publish = ClientOp::PublishPrekeys {
        signed: Box::new(secrets.current_signed().clone()),
        one_time: pool,
    };
    h.client(false, T0 + HOUR_MS, publish);
    let t = T0 + 2 * HOUR_MS;
    let mut with_otk = 0;
    for i in 0..500u64 {
        let fresh = format!("NodeFresh{i}");
        h.b.handle_fed_request(t, Token(1000 + i), &fresh, FedRequest::FetchBundle(bob));
        let (_, answers, _) = h.drain(false);
        let [FedResponse::Bundle(Some(b))] = answers.as_slice() else {
            panic!("every requester gets a bundle: {answers:?}")
        };
        with_otk += b.one_time.is_some() as u32;
    }
    assert_eq!(with_otk, ONE_TIME_PREKEYS_PER_USER_PER_HOUR);
    assert!(
        h.b.handouts
            .get(&bob)
            .is_some_and(|x| x.by_node.len() <= 50)
    );
    // A node that cannot be dialled (its address not yet learnt) is tried again after 1 s and
    // 3 s more; then the device hears it is unreachable. An unknown user gets a typed answer.
    assert!(h.client(true, T0, fetch.clone()).is_empty());
    let (mut batch, _, _) = h.stash.pop().unwrap();
    let mut t = T0;
    for delay in BUNDLE_RETRY_MS {
        h.a.handle_fed_response(t, batch, Err(FedFailure::Unreachable));
        assert!(
            h.drain(true) == (vec![], vec![], vec![]),
            "nothing before the retry"
        );
        assert_eq!(h.a.poll_timeout(), Some(t + delay));
        t += delay;
        h.a.handle_timeout(t);
        let (reqs, _, answers) = h.drain(true);
        assert!(answers.is_empty());
        let [(again, to, FedRequest::FetchBundle(who))] = reqs.as_slice() else {
            panic!("the fetch is sent again: {reqs:?}")
        };
        assert_eq!((to.as_str(), *who), ("NodeB", bob));
        batch = *again;
    }
    h.a.handle_fed_response(t, batch, Err(FedFailure::Unreachable));
    assert_eq!(
        h.drain(true).2,
        vec![ClientResponse::Error(ClientError::NodeUnreachable)]
    );
    // A timeout is not retried (the remote may be slow, not unknown), and a retry that gets
    // through is answered with the bundle.
    assert!(h.client(true, t, fetch.clone()).is_empty());
    let (batch, _, _) = h.stash.pop().unwrap();
    h.a.handle_fed_response(t, batch, Err(FedFailure::Timeout));
    assert_eq!(
        h.drain(true).2,
        vec![ClientResponse::Error(ClientError::NodeUnreachable)]
    );
    assert!(h.client(true, t, fetch).is_empty());
    let (batch, _, _) = h.stash.pop().unwrap();
    h.a.handle_fed_response(t, batch, Err(FedFailure::Unreachable));
    h.a.handle_timeout(t + BUNDLE_RETRY_MS[0]);
    let (reqs, _, _) = h.drain(true);
    let [(again, _, FedRequest::FetchBundle(_))] = reqs.as_slice() else {
        panic!("{reqs:?}")
    };
    h.b.handle_fed_request(t, Token(9999), "NodeA", FedRequest::FetchBundle(bob));
    let (_, answers, _) = h.drain(false);
    let [answer] = answers.as_slice() else {
        panic!("{answers:?}")
    };
    h.a.handle_fed_response(t, *again, Ok(answer.clone()));
    let (_, _, got) = h.drain(true);
    assert!(
        matches!(got.as_slice(), [ClientResponse::Bundle(b)] if b.identity == bob),
        "{got:?}"
    );
    let stranger = IdentityKey::generate(&mut h.rng).user_id();
    let local = ClientOp::FetchBundle {
        user: stranger,
        node: "NodeA".into(),
    };
    assert_eq!(
        h.client(true, T0, local),
        vec![ClientResponse::Error(ClientError::NoBundle)]
    );
}

#[test]
fn a_user_sending_faster_than_the_allowance_is_refused_then_let_through() {
    let mut h = Harness::new();
    // Spend the burst in large requests (envelopes need not be valid for the count).
    let e = h.letter("x", T0, 60_000);
    let batch: Vec<Outgoing> = (0..MAX_BATCH_ENVELOPES)
        .map(|_| Outgoing {
            to_node: "NodeB".into(),
            envelope: e.clone(),
        })
        .collect();
    let mut sent = 0u64;
    while sent + MAX_BATCH_ENVELOPES as u64 <= SEND_BURST {
        let r = h.client(true, T0, ClientOp::Send(batch.clone()));
        assert!(matches!(r.as_slice(), [ClientResponse::Sent(_)]), "{r:?}");
        sent += MAX_BATCH_ENVELOPES as u64;
    }
    let r = h.client(true, T0, ClientOp::Send(batch.clone()));
    let [ClientResponse::Error(ClientError::RateLimited { retry_after_ms })] = r.as_slice() else {
        panic!("{r:?}")
    };
    // After the advertised wait, the same request goes through.
    let later = T0 + *retry_after_ms as Millis;
    let r = h.client(true, later, ClientOp::Send(batch));
    assert!(matches!(r.as_slice(), [ClientResponse::Sent(_)]), "{r:?}");
    // Another user's allowance is untouched.
    let r = h.client(false, later, ClientOp::Status(vec![]));
    assert!(matches!(r.as_slice(), [ClientResponse::Status(_)]));
}

#[test]
fn a_node_with_a_call_relay_hands_its_own_users_credentials_that_open_to_them() {
    use hestia_protocol::turn::TurnKeys;
    let mut h = Harness::new();
    // Node A runs no relay: a typed refusal.
    assert_eq!(
        h.client(true, T0, ClientOp::TurnCredentials),
        vec![ClientResponse::Error(ClientError::CallsDisabled)]
    );
    let server: std::net::SocketAddr = "203.0.113.5:3478".parse().unwrap();
    let mut c = config("NodeB");
    c.turn = Some(super::CallRelay {
        server,
        keys: std::sync::Arc::new(TurnKeys::derive(&[9; 32])),
    });
    h.b = Core::from_store(c, &h.store_b, T0).unwrap();
    let [ClientResponse::Turn(grant)] = &h.client(false, T0, ClientOp::TurnCredentials)[..] else {
        panic!("no grant")
    };
    assert_eq!(grant.server, server.to_string());
    let keys = TurnKeys::derive(&[9; 32]);
    assert_eq!(
        keys.open(&grant.username, T0 + 1),
        Ok((h.bob.user_id(), grant.expires_at))
    );
    assert_eq!(keys.password(&grant.username), grant.password);
    // Without a session there is nothing: a stranger's request is refused before any op.
    h.b.handle_client(
        T0,
        Token(77),
        "stranger",
        ClientRequest {
            auth: Auth::Session(h.bob.user_id()),
            op: ClientOp::TurnCredentials,
        },
    );
    let (_, _, out) = h.drain(false);
    assert!(
        !out.iter().any(|r| matches!(r, ClientResponse::Turn(_))),
        "{out:?}"
    );
}
