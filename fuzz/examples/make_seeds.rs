//! Writes each target's seed corpus from real encodings, into `fuzz/corpus/<target>/`.

use hestia_fuzz::{NOW, fixture, rng};
use hestia_protocol::codec;
use hestia_protocol::envelope::{Content, Envelope, EnvelopeId, Letter};
use hestia_protocol::seal;
use hestia_protocol::session::prekeys::PrekeyBundle;
use hestia_protocol::wire::{
    Auth, ClientAuth, ClientOp, ClientRequest, ClientResponse, DeliverResult, FedRequest,
    FedResponse, Outgoing, Presence, SendResult,
};
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
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
}
