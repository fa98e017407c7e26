//! Calls between real processes: two nodes, each relaying its own user's media, the
//! signalling across the federation inside the end-to-end sessions, audio checked by decoding
//! what each side recorded.

use hestia_node::client::call::wav::{read_samples, tone_share};
use hestia_tests::Net;
use std::path::Path;
use std::time::{Duration, Instant};

/// Alice on node 0, Bob on node 1, each the other's contact.
fn alice_and_bob(net: &Net) {
    net.contacts_both_ways("alice", 0, "bob", 1);
}

/// The share of the recording's energy at `hz`, after its first second (set-up).
fn share_at(path: &Path, hz: f64) -> f64 {
    let samples = read_samples(path, 48_000 * 30).unwrap();
    assert!(
        samples.len() > 48_000 * 2,
        "{} samples recorded",
        samples.len()
    );
    tone_share(&samples[48_000..], hz)
}

#[test]
fn a_call_across_two_nodes_is_relayed_by_both_and_each_side_hears_the_others_tone() {
    let net = Net::start_with_call_relays(2);
    alice_and_bob(&net);
    let dir = net.tmp.path();
    let (alice_wav, bob_wav) = (dir.join("alice-heard.wav"), dir.join("bob-heard.wav"));
    let (mut bob, bob_out) = net.spawn_client(
        "bob",
        &[
            "--json",
            "call",
            "--listen",
            "--auto-answer",
            "--audio",
            "tone:1000",
            "--record",
            bob_wav.to_str().unwrap(),
            "--bind",
            "127.0.0.22",
            "--wait-secs",
            "60",
        ],
    );
    let out = net.run(
        "alice",
        &[
            "--json",
            "call",
            "bob",
            "--audio",
            "tone:440",
            "--record",
            alice_wav.to_str().unwrap(),
            "--max-secs",
            "4",
            "--bind",
            "127.0.0.21",
        ],
    );
    let alice_said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{alice_said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = hestia_tests::wait_exit(&mut bob, 20, "Bob's call");
    let bob_said = std::fs::read_to_string(&bob_out).unwrap();
    assert!(status.success(), "{bob_said}");

    // Each heard the other's tone, not its own.
    assert!(share_at(&bob_wav, 440.0) > 0.5, "Bob heard 440 Hz");
    assert!(share_at(&bob_wav, 1000.0) < 0.05);
    assert!(share_at(&alice_wav, 1000.0) > 0.5, "Alice heard 1000 Hz");
    assert!(share_at(&alice_wav, 440.0) < 0.05);

    // The candidates each device received name only the other's node's relay.
    let connected = |said: &str| -> Vec<String> {
        let line = said
            .lines()
            .find(|l| l.contains("\"connected\""))
            .unwrap_or_else(|| panic!("never connected: {said}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["remote_candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    for (said, relay, device) in [
        (&alice_said, "127.0.0.12", "127.0.0.22"),
        (&bob_said, "127.0.0.11", "127.0.0.21"),
    ] {
        let cands = connected(said);
        assert!(!cands.is_empty());
        for c in cands {
            assert!(c.contains(relay) && c.contains("typ relay"), "{c}");
            assert!(!c.contains(device), "{c}");
        }
    }

    // Both histories hold the call, with its length.
    let alice_history = net.ok("alice", &["inbox", "--all"]);
    assert!(
        alice_history.contains("call to bob: 0:0"),
        "{alice_history}"
    );
    let bob_history = net.ok("bob", &["inbox", "--all"]);
    assert!(
        bob_history.contains("call from alice: 0:0"),
        "{bob_history}"
    );
}

#[test]
fn a_call_nobody_answers_ends_plainly_and_the_callee_sees_it_missed() {
    let net = Net::start_with_call_relays(2);
    alice_and_bob(&net);
    // Bob has no device online: Alice's call rings out.
    let out = net.run("alice", &["call", "bob", "--ring-secs", "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bob did not answer"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // When Bob's device comes online it shows the missed call, once.
    let inbox = net.ok("bob", &["inbox"]);
    assert!(inbox.contains("missed call from alice"), "{inbox}");
    let history = net.ok("bob", &["inbox", "--all"]);
    assert!(history.contains("call from alice: missed"), "{history}");
    let history = net.ok("alice", &["inbox", "--all"]);
    assert!(history.contains("call to bob: no answer"), "{history}");
    // A node without a relay says so, in one line.
    let plain = Net::start(1);
    plain.account("carol", 0);
    let dave = plain.account("dave", 0);
    plain.ok("carol", &["contact", "add", "dave", &dave]);
    let out = plain.run("carol", &["call", "dave"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not relay calls"), "{err}");
}

#[test]
fn a_call_rings_a_following_inbox_and_is_answered_by_typing_a() {
    use std::io::Write;
    let net = Net::start_with_call_relays(2);
    alice_and_bob(&net);
    let out = net.tmp.path().join("bob-follow.out");
    let file = std::fs::File::create(&out).unwrap();
    let mut bob = std::process::Command::new(hestia_tests::hestia_bin())
        .arg("--home")
        .arg(net.home("bob"))
        .args(["inbox", "--follow"])
        .stdin(std::process::Stdio::piped())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let (mut alice, alice_out) = net.spawn_client(
        "alice",
        &["call", "bob", "--max-secs", "2", "--ring-secs", "30"],
    );
    let said = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(30);
    while !said(&out).contains("alice is calling") {
        assert!(Instant::now() < until, "never rang: {}", said(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
    bob.stdin.as_mut().unwrap().write_all(b"a\n").unwrap();
    let status = hestia_tests::wait_exit(&mut alice, 30, "the call");
    assert!(status.success(), "{}", said(&alice_out));
    assert!(
        said(&alice_out).contains("connected"),
        "{}",
        said(&alice_out)
    );
    while !said(&out).contains("heard") {
        assert!(Instant::now() < until, "{}", said(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the inbox goes on following: a message after the call still shows.
    net.ok("alice", &["send", "bob", "after the call"]);
    while !said(&out).contains("after the call") {
        assert!(Instant::now() < until, "{}", said(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = bob.kill();
    let _ = bob.wait();
}
