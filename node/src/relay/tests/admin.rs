//! The operator's requests and policy in the core: invites, suspension, deletion, federation.

use super::*;

impl Harness {
    /// An admin request to node A; its answer.
    fn admin_a(&mut self, now: Millis, req: AdminRequest) -> AdminResponse {
        self.a.handle_admin(now, Token(999), req, [7; 16]);
        self.drain(true);
        self.admin.pop().expect("an answer")
    }

    /// Alice fetches without waiting.
    fn fetch_now(&mut self) -> Vec<ClientResponse> {
        let op = ClientOp::Fetch {
            limit: 1,
            wait_ms: 0,
        };
        self.client(true, T0, op)
    }

    /// A request signed by `key` to node A.
    fn as_user(&mut self, key: &IdentityKey, now: Millis, op: ClientOp) -> Vec<ClientResponse> {
        let auth = ClientAuth::sign(key, "NodeA", "device-2", now, &op).unwrap();
        self.a.handle_client(
            now,
            Token(1),
            "device-2",
            ClientRequest {
                auth: Auth::Signed(Box::new(auth)),
                op,
            },
        );
        self.drain(true).2
    }
}

#[test]
fn invites_are_spent_checked_and_revoked() {
    let mut h = Harness::new();
    h.a.set_registration(Registration::Invite);
    let carol = IdentityKey::generate(&mut rand::rng());
    assert_eq!(
        h.as_user(&carol, T0, ClientOp::Register),
        vec![ClientResponse::Error(ClientError::InviteRequired)]
    );
    let AdminResponse::InviteCreated { token, invite } = h.admin_a(
        T0,
        AdminRequest::InviteCreate {
            uses: 1,
            expires_in_secs: Some(60),
            note: "for carol\u{1b}[31m".into(),
        },
    ) else {
        panic!("no invite")
    };
    assert_eq!(
        invite.note, "for carol[31m",
        "control characters are dropped"
    );
    let reg = |t: &str| ClientOp::RegisterWithInvite(t.to_string());
    assert_eq!(
        h.as_user(&carol, T0, reg("00")),
        vec![ClientResponse::Error(ClientError::InviteInvalid)]
    );
    assert_eq!(
        h.as_user(&carol, T0, reg(&token)),
        vec![ClientResponse::Registered]
    );
    // Registering again is idempotent and spends nothing; another user finds it used up.
    assert_eq!(
        h.as_user(&carol, T0, reg(&token)),
        vec![ClientResponse::Registered]
    );
    let dave = IdentityKey::generate(&mut rand::rng());
    assert_eq!(
        h.as_user(&dave, T0, reg(&token)),
        vec![ClientResponse::Error(ClientError::InviteUsedUp)]
    );
    // Expiry, and a restart keeps the spent count.
    h.a.handle_admin(
        T0 + 1,
        Token(5),
        AdminRequest::InviteCreate {
            uses: 5,
            expires_in_secs: Some(60),
            note: String::new(),
        },
        [8; 16],
    );
    h.drain(true);
    let AdminResponse::InviteCreated { token: t2, invite } = h.admin.pop().unwrap() else {
        panic!()
    };
    assert_eq!(
        h.as_user(&dave, T0 + 61_000, reg(&t2)),
        vec![ClientResponse::Error(ClientError::InviteExpired)]
    );
    h.a = restarted("NodeA", &h.store_a, T0 + 62_000);
    h.a.set_registration(Registration::Invite);
    let AdminResponse::Invites(list) = h.admin_a(T0 + 62_000, AdminRequest::InviteList) else {
        panic!()
    };
    let states: Vec<&str> = list.iter().map(|i| i.state.as_str()).collect();
    assert_eq!(states, ["used up", "expired"]);
    assert!(matches!(
        h.admin_a(T0 + 62_000, AdminRequest::InviteRevoke { id: invite.id }),
        AdminResponse::Done(_)
    ));
    assert_eq!(h.store_a.load().unwrap().invites.len(), 1);
    // The token is not stored, only its hash.
    let stored = format!("{:?}", h.store_a.load().unwrap().invites);
    assert!(!stored.contains(&token));
}

#[test]
fn registrations_are_counted_per_address() {
    let mut h = Harness::new();
    let ip: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    for n in 0..=REGISTRATIONS_PER_ADDRESS_PER_HOUR {
        let key = IdentityKey::generate(&mut rand::rng());
        let op = ClientOp::Register;
        let auth = ClientAuth::sign(&key, "NodeA", "d", T0, &op).unwrap();
        h.a.handle_client_from(
            T0,
            Token(1),
            "d",
            Some(ip),
            ClientRequest {
                auth: Auth::Signed(Box::new(auth)),
                op,
            },
        );
        let answer = h.drain(true).2;
        if n < REGISTRATIONS_PER_ADDRESS_PER_HOUR {
            assert_eq!(answer, vec![ClientResponse::Registered]);
        } else {
            assert!(matches!(
                answer[..],
                [ClientResponse::Error(ClientError::RateLimited { .. })]
            ));
        }
    }
}

#[test]
fn a_suspended_user_can_neither_send_nor_fetch_and_a_deleted_one_leaves_nothing() {
    let mut h = Harness::new();
    let alice = h.alice.user_id().to_hex();
    // Alice is parked in a long poll when she is suspended: the poll ends with the reason.
    h.client(
        true,
        T0,
        ClientOp::Fetch {
            limit: 10,
            wait_ms: 30_000,
        },
    );
    h.a.handle_admin(
        T0,
        Token(9),
        AdminRequest::UserSuspend {
            user: alice[..10].into(),
            note: "spam".into(),
        },
        [0; 16],
    );
    let (_, _, answers) = h.drain(true);
    assert_eq!(answers, vec![ClientResponse::Error(ClientError::Suspended)]);
    let e = h.letter("hi", T0, 60_000);
    assert_eq!(
        h.send_to_b(T0, e),
        vec![ClientResponse::Error(ClientError::Suspended)]
    );
    h.a = restarted("NodeA", &h.store_a, T0);
    assert_eq!(
        h.fetch_now(),
        vec![ClientResponse::Error(ClientError::Suspended)],
        "a restart keeps the suspension"
    );
    assert!(matches!(
        h.admin_a(
            T0,
            AdminRequest::UserUnsuspend {
                user: alice.clone()
            }
        ),
        AdminResponse::Done(_)
    ));
    // Mail for her, then her account deleted: nothing of hers stays.
    let mut to_alice = h.letter("for alice", T0, 60_000);
    to_alice.recipient = h.alice.user_id();
    h.client(
        true,
        T0,
        ClientOp::Send(vec![Outgoing {
            to_node: "NodeA".into(),
            envelope: to_alice,
        }]),
    );
    assert_eq!(h.a.stats().mailbox_envelopes, 1);
    let AdminResponse::Done(msg) = h.admin_a(
        T0,
        AdminRequest::UserDelete {
            user: alice.clone(),
        },
    ) else {
        panic!()
    };
    assert!(msg.contains("1 envelopes"), "{msg}");
    let snap = h.store_a.load().unwrap();
    assert!(snap.accounts.is_empty() && snap.signed_prekeys.is_empty());
    assert_eq!(h.a.stats().mailbox_envelopes, 0);
    let mut left = 0;
    h.store_a.for_each_mailbox(&mut |_| left += 1).unwrap();
    assert_eq!(left, 0);
    assert_eq!(
        h.fetch_now(),
        vec![ClientResponse::Error(ClientError::NotRegistered)]
    );
    assert!(matches!(
        h.admin_a(T0, AdminRequest::UserShow { user: alice }),
        AdminResponse::Error(_)
    ));
}

#[test]
fn a_denied_node_is_refused_both_ways_and_its_queue_is_refused() {
    let mut h = Harness::new();
    // B refusing A's batch (B's own policy) is final: the envelope is refused, not retried.
    let e = h.letter("first", T0, 60_000);
    let id = e.id;
    h.send_to_b(T0, e);
    let (batch, _, _) = std::mem::take(&mut h.stash).remove(0);
    h.a.handle_fed_response(T0, batch, Ok(FedResponse::Refused(Refusal::Denied)));
    let st = h.client(true, T0, ClientOp::Status(vec![id]));
    assert_eq!(
        st,
        vec![ClientResponse::Status(vec![DeliveryState::Refused])]
    );
    // Mail queued for B (its batch failed, waiting to be retried), then B denied here: the
    // queue is refused at once.
    let e2 = h.letter("second", T0, 60_000);
    let id2 = e2.id;
    h.send_to_b(T0, e2);
    let (batch, _, _) = std::mem::take(&mut h.stash).remove(0);
    h.a.handle_fed_response(T0, batch, Err(FedFailure::Unreachable));
    assert!(matches!(
        h.admin_a(T0, AdminRequest::FederationDeny { node: "NodeB".into() }),
        AdminResponse::Done(m) if m.contains("1 queued")
    ));
    let st = h.client(true, T0, ClientOp::Status(vec![id2]));
    assert_eq!(
        st,
        vec![ClientResponse::Status(vec![DeliveryState::Refused])]
    );
    let e3 = h.letter("after", T0, 60_000);
    assert_eq!(
        h.send_to_b(T0, e3),
        vec![ClientResponse::Sent(vec![SendResult::Denied])]
    );
    let bob = h.bob.user_id();
    assert_eq!(
        h.client(
            true,
            T0,
            ClientOp::FetchBundle {
                user: bob,
                node: "NodeB".into()
            }
        ),
        vec![ClientResponse::Error(ClientError::NodeDenied)]
    );
    // Inbound from B: refused.
    let inbound = h.letter("from b", T0, 60_000);
    h.a.handle_fed_request(T0, Token(3), "NodeB", FedRequest::Deliver(vec![inbound]));
    assert_eq!(h.drain(true).1, vec![FedResponse::Refused(Refusal::Denied)]);
    // An allow list: only listed nodes federate.
    h.admin_a(
        T0,
        AdminRequest::FederationClear {
            node: "NodeB".into(),
        },
    );
    assert!(h.a.federates_with("NodeC"));
    h.admin_a(
        T0,
        AdminRequest::FederationAllow {
            node: "NodeB".into(),
        },
    );
    assert!(h.a.federates_with("NodeB") && !h.a.federates_with("NodeC"));
    let again = restarted("NodeA", &h.store_a, T0);
    assert!(again.federates_with("NodeB") && !again.federates_with("NodeC"));
    assert!(matches!(
        h.admin_a(
            T0,
            AdminRequest::FederationDeny {
                node: "NodeA".into()
            }
        ),
        AdminResponse::Error(_)
    ));
}
