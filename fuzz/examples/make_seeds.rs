//! Writes each target's seed corpus from real encodings, into `fuzz/corpus/<target>/`.

use hestia_fuzz::{NOW, fixture, rng};
use hestia_protocol::codec;
use hestia_protocol::envelope::{Content, Envelope, EnvelopeId, Letter};
use hestia_protocol::file::{BlobId, Capability, cap_hash};
use hestia_protocol::identity::{Address, UserId};
use hestia_protocol::seal;
use hestia_protocol::session::prekeys::PrekeyBundle;
use hestia_protocol::wire::{
    Auth, ClientAuth, ClientOp, ClientRequest, ClientResponse, DeliverResult, FedRequest,
    FedResponse, Outgoing, Presence, SendResult,
};
use hestia_protocol::wire::{BlobPhase, BlobSpec, DeliveryState};
use hestia_store::records::{
    AccountRecord, BlobRecord, Contact, Direction, FederationRecord, FederationRule,
    InviteRecord, MessageState, Origin, OutboxRecord, PendingReceipts, PushRecord, StatusRecord,
    StoredIdentity, StoredMessage, SuspensionRecord, Trust, UnsentEnvelope,
};
use hestia_store::schema::{self, *};
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

/// A `stored_records` input: the family's index, the key's length, the key, the value.
fn stored(cf: &str, key: &[u8], value: &[u8]) {
    let all: Vec<&str> = NODE_CFS.iter().chain(CLIENT_CFS).copied().collect();
    let i = all.iter().position(|c| *c == cf).expect("a known family");
    // A seed is what the store writes, so the check must accept it.
    if let Err(e) = hestia_store::records::check(cf, key, value) {
        panic!("seed for {cf}: {e}");
    }
    let input = [&[i as u8, key.len() as u8], key, value].concat();
    write("stored_records", &format!("{cf}-{}", key.len()), &input);
}

fn main() {
    let f = fixture();
    let rng = &mut rng();
    let id = EnvelopeId([3; 16]);
    let env = Envelope::seal_message(
        rng,
        id,
        &f.bob.user_id(),
        &f.alice.user_id(),
        f.later.clone(),
        NOW,
        60_000,
    )
    .expect("sealing");
    write(
        "envelope",
        "message",
        &codec::encode(&env).expect("encoding"),
    );
    let letter = Letter::new("12D3KooWnode", "alice", Content::Text("hi".into()), NOW).unwrap();
    write("letter", "text", &letter.to_bytes().unwrap());
    let receipt = Letter::new("12D3KooWnode", "alice", Content::Receipt(vec![id]), NOW).unwrap();
    write("letter", "receipt", &receipt.to_bytes().unwrap());
    let op = ClientOp::Send(vec![Outgoing {
        to_node: "12D3KooWother".into(),
        envelope: env.clone(),
    }]);
    let auth = ClientAuth::sign(&f.alice, "12D3KooWnode", "12D3KooWpeer", NOW, &op).unwrap();
    let req = ClientRequest {
        auth: Auth::Signed(Box::new(auth)),
        op,
    };
    write("client_wire", "send", &codec::encode(&req).unwrap());
    let resp = ClientResponse::Sent(vec![SendResult::Queued]);
    write("client_wire", "sent", &codec::encode(&resp).unwrap());
    write(
        "client_wire",
        "envelopes",
        &codec::encode(&ClientResponse::Envelopes(vec![env.clone()])).unwrap(),
    );
    write(
        "fed_wire",
        "deliver",
        &codec::encode(&FedRequest::Deliver(vec![env.clone()])).unwrap(),
    );
    write(
        "fed_wire",
        "delivered",
        &codec::encode(&FedResponse::Delivered(vec![DeliverResult::Accepted])).unwrap(),
    );
    let sealed = seal::seal(rng, &f.bob.user_id(), b"a sealed body", b"aad-8byt").unwrap();
    write(
        "sealed_box",
        "box",
        &[b"aad-8byt".as_slice(), &sealed].concat(),
    );
    write("ratchet", "first", &codec::encode(&f.first).unwrap());
    write("ratchet", "later", &codec::encode(&f.later).unwrap());
    write("stored_state", "session", &f.alice_session.to_stored());
    write(
        "stored_state",
        "prekeys",
        &f.bob_prekeys.to_stored().unwrap(),
    );
    let p = Presence {
        peer_id: "12D3KooWnode".into(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        protocol_version: 1,
        at: NOW,
    };
    write("presence", "announce", &codec::encode(&p).unwrap());
    {
        use hestia_protocol::stun::{Attribute, Class, Message, Method, long_term_key};
        let peer = "203.0.113.9:40000".parse().unwrap();
        let key = long_term_key("u", "hestia", "p");
        let allocate = Message::new(Class::Request, Method::Allocate, [3; 12])
            .with(Attribute::RequestedTransport(17))
            .with(Attribute::Username("u".into()))
            .with(Attribute::Realm("hestia".into()))
            .with(Attribute::Nonce("00".into()))
            .encode(Some(&key));
        write("stun", "allocate", &allocate);
        let data = Message::new(Class::Indication, Method::Data, [4; 12])
            .with(Attribute::XorPeerAddress(peer))
            .with(Attribute::Data(vec![0x80; 60]))
            .encode(None);
        write("stun", "data", &data);
    }
    let bundle = PrekeyBundle {
        identity: f.bob.user_id(),
        signed_prekey: f.bob_prekeys.current_signed().clone(),
        one_time: None,
    };
    write("bundle", "bundle", &codec::encode(&bundle).unwrap());
    write(
        "display",
        "escapes",
        "\u{1b}[1Ahi\u{202e}x\nWARNING".as_bytes(),
    );
    for (name, body) in [
        ("send", codec::encode(&req).unwrap()),
        (
            "deliver",
            codec::encode(&FedRequest::Deliver(vec![env.clone()])).unwrap(),
        ),
    ] {
        let framed = hestia_protocol::frame::frame(&body).unwrap();
        write("frame", name, &[&[7u8], framed.as_slice()].concat());
    }

    let (alice, bob) = (f.alice.user_id(), f.bob.user_id());
    stored(
        USERID_ACCOUNT,
        alice.as_bytes(),
        &codec::encode(&AccountRecord { created_at: NOW }).unwrap(),
    );
    stored(
        USERID_ENVELOPEID_MAILBOX,
        &schema::mailbox_key(&env.recipient, &env.id),
        &codec::encode(&env).unwrap(),
    );
    // The metadata forms are private to the store; their encodings are these tuples'.
    stored(
        USERID_ENVELOPEID_MAILBOXMETA,
        &schema::mailbox_key(&env.recipient, &env.id),
        &codec::encode(&(env.expires_at, env.body.len() as u32)).unwrap(),
    );
    let node = "12D3KooWother";
    let out = OutboxRecord {
        owner: alice,
        to_node: node.into(),
        envelope: env.clone(),
        attempts: 1,
    };
    stored(
        NODEID_ENVELOPEID_OUTBOX,
        &schema::outbox_key(node, &env.id),
        &codec::encode(&out).unwrap(),
    );
    stored(
        NODEID_ENVELOPEID_OUTBOXMETA,
        &schema::outbox_key(node, &env.id),
        &codec::encode(&(alice, env.expires_at, env.body.len() as u32)).unwrap(),
    );
    let status = StatusRecord {
        owner: alice,
        state: DeliveryState::Queued { attempts: 0 },
        expires_at: NOW,
    };
    stored(
        ENVELOPEID_STATUS,
        &env.id.0,
        &codec::encode(&status).unwrap(),
    );
    stored(
        USERID_SIGNEDPREKEY,
        bob.as_bytes(),
        &codec::encode(f.bob_prekeys.current_signed()).unwrap(),
    );
    let identity = StoredIdentity {
        seed: [9; 32],
        name: "alice".into(),
        home_node: "12D3KooWnode".into(),
        home_addr: "/ip4/127.0.0.1/tcp/4001".into(),
    };
    stored(
        KEY_IDENTITY,
        b"identity",
        &codec::encode(&identity).unwrap(),
    );
    stored(
        KEY_IDENTITY,
        b"prekeys",
        &f.bob_prekeys.to_stored().unwrap(),
    );
    let contact = Contact {
        name: "bob".into(),
        handle: Some("bob".into()),
        address: Address {
            user: bob,
            node: "12D3KooWother".into(),
        },
        trust: Trust::Unverified,
        added_at: NOW,
        origin: Origin::Added,
        claims: None,
        reset_asked_at: None,
    };
    stored(NAME_CONTACT, b"bob", &codec::encode(&contact).unwrap());
    let message = StoredMessage {
        envelope_id: id,
        direction: Direction::Outgoing,
        peer: bob,
        peer_node: "12D3KooWother".into(),
        peer_name: "bob".into(),
        text: "hi".into(),
        at: NOW,
        expires_at: NOW + 60_000,
        state: MessageState::DeliveredToNode,
    };
    stored(
        SEQ_MESSAGE,
        &schema::seq_key(3),
        &codec::encode(&message).unwrap(),
    );
    stored(ENVELOPEID_SEQ, &id.0, &schema::seq_key(3));
    let sessions = vec![f.alice_session.to_stored().to_vec()];
    stored(
        USERID_SESSIONS,
        bob.as_bytes(),
        &codec::encode(&sessions).unwrap(),
    );
    let receipts = PendingReceipts {
        node: "12D3KooWother".into(),
        due_at: NOW,
        ids: vec![id],
    };
    stored(
        USERID_RECEIPTS,
        bob.as_bytes(),
        &codec::encode(&receipts).unwrap(),
    );
    stored(USERID_SKIPPED, bob.as_bytes(), &3u32.to_be_bytes());
    stored(USERID_BLOCKED, UserId([5; 32]).as_bytes(), &[]);
    let blob = BlobId([6; 16]);
    let spec = BlobSpec::of_file(600_000, cap_hash(&Capability([7; 32])), NOW + 60_000);
    let record = BlobRecord {
        owner: alice,
        held: vec![0b101],
        spec: spec.clone(),
        phase: BlobPhase::Uploading,
        touched_at: NOW,
    };
    stored(BLOBID_BLOB, &blob.0, &codec::encode(&record).unwrap());
    stored(
        BLOBID_INDEX_CHUNK,
        &schema::chunk_key(&blob, 2),
        &vec![1; spec.last_chunk_bytes as usize],
    );
    let subscription = hestia_protocol::push::Subscription {
        endpoint: "https://push.example.org/wake/abc".into(),
        p256dh: [&[4u8][..], &[9; 64]].concat(),
        auth: [3; 16],
    };
    let push = PushRecord {
        subscription: subscription.clone(),
        registered_at: NOW,
        removed: Some((NOW + 1, 410)),
    };
    stored(
        USERID_ENDPOINT_PUSH,
        &schema::push_key(&bob, &hestia_protocol::push::endpoint_id(&subscription.endpoint)),
        &codec::encode(&push).unwrap(),
    );
    stored(
        ENVELOPEID_UNSENT,
        &env.id.0,
        &codec::encode(&UnsentEnvelope {
            to_node: "12D3KooWother".into(),
            envelope: env.clone(),
        })
        .unwrap(),
    );
    let suspension = SuspensionRecord {
        at: NOW,
        note: "spam".into(),
    };
    stored(
        USERID_SUSPENSION,
        bob.as_bytes(),
        &codec::encode(&suspension).unwrap(),
    );
    let invite = InviteRecord {
        created_at: NOW,
        expires_at: Some(NOW + 1),
        uses: 2,
        used: 1,
        note: String::new(),
    };
    stored(INVITEHASH_INVITE, &[9; 32], &codec::encode(&invite).unwrap());
    let rule = FederationRecord {
        rule: FederationRule::Deny,
        at: NOW,
    };
    stored(
        NODEID_FEDERATION,
        b"12D3KooWother",
        &codec::encode(&rule).unwrap(),
    );
    let invited = ClientRequest {
        auth: Auth::Session(bob),
        op: ClientOp::RegisterWithInvite("0123456789abcdef".into()),
    };
    write("client_wire", "register_invite", &codec::encode(&invited).unwrap());
    let register = ClientRequest {
        auth: Auth::Session(bob),
        op: ClientOp::PushRegister(subscription),
    };
    write("client_wire", "push_register", &codec::encode(&register).unwrap());
    let put = ClientOp::BlobPut {
        blob,
        index: 0,
        chunk: vec![2; 300],
    };
    let req = ClientRequest {
        auth: Auth::Session(alice),
        op: put,
    };
    write("client_wire", "blob_put", &codec::encode(&req).unwrap());
    let get = FedRequest::BlobGet {
        blob,
        index: 1,
        cap: Capability([7; 32]),
    };
    write("fed_wire", "blob_get", &codec::encode(&get).unwrap());
}
