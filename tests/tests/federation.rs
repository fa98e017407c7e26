//! Two nodes and a bootstrap node on loopback, separate processes, real TCP.

use hestia_tests::{Net, files_containing, safety_code};

const TEXT: &str = "the plaintext canary: 7f3a9c lighthouse at nine";

/// Alice on node 0, with Bob (on node 1) as her contact.
fn alice_adds_bob(net: &Net) {
    net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
}

#[test]
fn offline_recipient_gets_message_once_and_nodes_never_see_plaintext() {
    let net = Net::start(2);
    net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    // Bob is offline (no client connected) when Alice sends.
    let sent = net.ok("alice", &["send", "bob", TEXT]);
    assert!(sent.contains("delivered to their node"), "{sent}");

    let inbox = net.ok("bob", &["inbox"]);
    assert!(inbox.contains(&format!("alice: {TEXT}")), "{inbox}");
    // Trust on first use: Alice is now a contact of Bob's, pinned and unverified.
    let contacts = net.ok("bob", &["contact", "list"]);
    assert!(
        contacts.contains("alice") && contacts.contains("unverified"),
        "{contacts}"
    );
    // Exactly once: reading again shows nothing new.
    assert!(!net.ok("bob", &["inbox"]).contains(TEXT));
    // Bob's device receipt reaches Alice, after its random delay.
    net.until_receipt("bob", "alice");

    for i in 0..2 {
        let hits = files_containing(&net.node_dir(i), TEXT.as_bytes());
        assert!(hits.is_empty(), "node {i} stored plaintext in {hits:?}");
    }
    assert!(
        !files_containing(&net.home("bob"), TEXT.as_bytes()).is_empty(),
        "history is on the device"
    );
    // What both nodes and both devices stored reads back as the stored forms say.
    net.check_stores(&["alice", "bob"]);
}

#[test]
fn node_down_and_kill9_after_ack_lose_nothing() {
    let mut net = Net::start(2);
    alice_adds_bob(&net);
    // The first message starts the session (it needs Bob's prekeys from his node).
    net.ok("alice", &["send", "bob", "first contact"]);

    // Bob's node is down: Alice's node acknowledges and queues.
    net.kill9(1);
    let sent = net.ok("alice", &["send", "bob", TEXT, "--wait", "0"]);
    assert!(sent.contains("queued"), "{sent}");
    // Alice's node dies after acknowledging, before passing the envelope on.
    net.kill9(0);
    net.restart(0);
    net.restart(1);
    net.until(
        "alice",
        &["status"],
        &format!("delivered to their node  \"{TEXT}\""),
    );

    // Bob's node dies after acknowledging to Alice's node, before Bob fetched.
    net.kill9(1);
    net.restart(1);
    let inbox = net.ok("bob", &["inbox"]);
    assert_eq!(inbox.matches(TEXT).count(), 1, "{inbox}");
    assert!(!net.ok("bob", &["inbox"]).contains(TEXT));
    let all = net.ok("bob", &["inbox", "--all"]);
    assert_eq!(
        all.matches(TEXT).count(),
        1,
        "delivered exactly once: {all}"
    );
}

#[test]
fn a_first_message_to_a_node_that_is_down_waits_on_the_device_then_goes() {
    let mut net = Net::start(2);
    alice_adds_bob(&net);
    // Bob's node is down: Alice's device cannot fetch his prekeys to start a session, so the
    // message waits on her device (and only there: no node holds anything for it).
    net.kill9(1);
    let sent = net.ok("alice", &["send", "bob", TEXT]);
    assert!(sent.contains("waiting on this device"), "{sent}");
    let status = net.ok("alice", &["status"]);
    assert!(status.contains("waiting on this device"), "{status}");
    net.restart(1);
    net.until(
        "alice",
        &["status"],
        &format!("delivered to their node  \"{TEXT}\""),
    );
    let inbox = net.ok("bob", &["inbox"]);
    assert_eq!(inbox.matches(TEXT).count(), 1, "{inbox}");
}

#[test]
fn expired_envelopes_are_dropped_and_reported() {
    let mut net = Net::start(2);
    alice_adds_bob(&net);
    net.ok("alice", &["send", "bob", "first contact"]);
    net.kill9(1);
    let sent = net.ok("alice", &["send", "bob", TEXT, "--wait", "0", "--ttl", "1"]);
    assert!(sent.contains("queued"), "{sent}");
    net.until("alice", &["status"], "expired undelivered");
    let out = hestia_tests::hestia(&[
        "node",
        "inspect",
        "--data-dir",
        net.node_dir(0).to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let stored = String::from_utf8_lossy(&out.stdout);
    assert!(
        stored.contains("outbox (waiting for other nodes): 0"),
        "{stored}"
    );
}

#[test]
fn unknown_recipient_gets_a_clear_answer() {
    let net = Net::start(2);
    net.account("alice", 0);
    net.account("bob", 1);
    // A valid key that has no account on node 1.
    let ghost = format!(
        "{}@{}",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        net.node_peer(1)
    );
    net.ok("alice", &["contact", "add", "ghost", &ghost]);
    let out = net.run("alice", &["send", "ghost", "hello?"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such user on that node"), "{err}");
}

#[test]
fn both_sides_starting_a_session_at_once_still_converse() {
    let net = Net::start(2);
    let alice = net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    net.ok("bob", &["contact", "add", "alice", &alice]);
    // Each starts a session from the other's prekeys before reading anything.
    net.ok("alice", &["send", "bob", "a1"]);
    net.ok("bob", &["send", "alice", "b1"]);
    net.ok("alice", &["send", "bob", "a2"]);
    // Until it has arrived: `send` waits a bounded time for their node, and a loaded machine
    // may take longer.
    net.until("bob", &["inbox"], "alice: a1");
    net.until("alice", &["inbox"], "bob: b1");
    // Messages crossing on the two sessions keep decrypting.
    net.ok("bob", &["send", "alice", "b2"]);
    net.ok("alice", &["send", "bob", "a3"]);
    let b = net.ok("bob", &["inbox", "--all"]);
    for t in ["alice: a1", "alice: a2", "alice: a3"] {
        assert!(b.contains(t), "{t} missing: {b}");
    }
    let a = net.ok("alice", &["inbox", "--all"]);
    for t in ["bob: b1", "bob: b2"] {
        assert!(a.contains(t), "{t} missing: {a}");
    }
    assert!(
        !a.contains("could not open") && !b.contains("could not open"),
        "{a}\n{b}"
    );
}

#[test]
fn safety_numbers_match_on_both_devices_and_a_scanned_code_verifies() {
    let net = Net::start(1);
    let alice = net.account("alice", 0);
    let bob = net.account("bob", 0);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    net.ok("bob", &["contact", "add", "alice", &alice]);
    let code = safety_code;
    let on_alice = net.ok("alice", &["contact", "verify", "bob"]);
    let on_bob = net.ok("bob", &["contact", "verify", "alice"]);
    assert_eq!(
        code(&on_alice),
        code(&on_bob),
        "the same number on both sides"
    );
    assert!(
        on_alice.contains('▀') || on_alice.contains('▄'),
        "a QR code is drawn"
    );
    // A code from someone else's key is refused and changes nothing.
    let mallory = net.account("mallory", 0);
    net.ok("alice", &["contact", "add", "mallory", &mallory]);
    let wrong = code(&net.ok("alice", &["contact", "verify", "mallory"]));
    let out = net.run("bob", &["contact", "verify", "alice", "--code", &wrong]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the codes differ"));
    assert!(net.ok("bob", &["contact", "list"]).contains("unverified"));
    // Bob scans Alice's code: one step, verified.
    let ok = net.ok(
        "bob",
        &["contact", "verify", "alice", "--code", &code(&on_alice)],
    );
    assert!(ok.contains("marked verified"), "{ok}");
    let list = net.ok("bob", &["contact", "list"]);
    assert!(
        list.contains("alice") && list.contains("verified") && !list.contains("unverified"),
        "{list}"
    );
}

#[test]
fn a_device_can_reach_its_node_over_quic_and_local_delivery_works() {
    let net = Net::start(1);
    let quic = net.nodes[0].as_ref().unwrap().quic_addr();
    net.ok(
        "carol",
        &["account", "create", "--node", &quic, "--name", "carol"],
    );
    let dave = net.account("dave", 0);
    net.ok("carol", &["contact", "add", "dave", &dave]);
    // Both users on one node: delivered straight into the local mailbox.
    let sent = net.ok("carol", &["send", "dave", "over quic"]);
    assert!(sent.contains("delivered to their node"), "{sent}");
    assert!(net.ok("dave", &["inbox"]).contains("carol: over quic"));
    net.until_receipt("dave", "carol");
}

#[test]
fn inbox_follow_prints_live_and_survives_its_node_restarting() {
    let mut net = Net::start(2);
    alice_adds_bob(&net);
    let (mut follow, out) = net.spawn_client("bob", &["inbox", "--follow"]);
    net.ok("alice", &["send", "bob", "live: before the restart"]);
    hestia_tests::wait_for_text(&out, "alice: live: before the restart");

    net.kill9(1);
    hestia_tests::wait_for_text(&out, "reconnecting");
    net.restart(1);
    hestia_tests::wait_for_text(&out, "reconnected");
    net.ok("alice", &["send", "bob", "live: after the restart"]);
    let text = hestia_tests::wait_for_text(&out, "alice: live: after the restart");
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(
        text.matches("live: before the restart").count(),
        1,
        "{text}"
    );
}
