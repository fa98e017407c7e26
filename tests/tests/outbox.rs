//! The device's outbox: a send whose answer was lost goes out again as the same envelope, so
//! the recipient sees every message once, however the sender's node failed and whatever the
//! person ran again.

use hestia_tests::Net;

fn text(i: usize) -> String {
    format!("outbox-msg-{i:03}-end")
}

#[test]
fn sends_whose_answer_was_lost_and_that_were_run_again_reach_the_recipient_exactly_once() {
    // Every node aborts after making its fourth device send durable, before answering it: the
    // worst moment, when the envelope is stored and the device cannot know it.
    let mut net = Net::start_with(2, &["--crash-after-sends", "4"]);
    net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    // Bob's device sends nothing (no receipts), so his node never reaches its fourth send.
    net.ok("bob", &["account", "receipts", "off"]);
    const N: usize = 12;
    let mut saved = 0;
    for i in 0..N {
        let send = ["send", "bob", &text(i), "--wait", "0"];
        let out = net.run("alice", &send);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if stdout.contains("saved; it will go out when your node answers") {
            saved += 1;
            // The node died answering: bring it back, and run the same command again, as
            // anyone would.
            if !net.nodes[0].as_mut().is_some_and(|n| n.is_running()) {
                net.nodes[0] = None;
                net.restart(0);
            }
            let again = net.ok("alice", &send);
            assert!(!again.contains("saved; it will"), "{again}");
        }
    }
    assert!(saved >= 2, "only {saved} sends lost their answer");
    let mut inbox = String::new();
    for _ in 0..50 {
        inbox.push_str(&net.ok("bob", &["inbox"]));
        if (0..N).all(|i| inbox.contains(&text(i))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for i in 0..N {
        assert_eq!(
            inbox.matches(&text(i)).count(),
            1,
            "message {i} ({saved} answers were lost):\n{inbox}"
        );
    }
    let status = net.ok("alice", &["status"]);
    assert!(!status.contains("saved; it will go out"), "{status}");
}
