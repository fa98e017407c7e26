//! The faults of the independent review (issue 9), each reproduced with the stock CLI on real
//! processes: a contact taken over by a name, terminal escapes in message text, receipts that
//! leave at once, files other local users can read.

use hestia_tests::{Net, safety_code};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn fingerprint_of(list: &str, name: &str) -> String {
    list.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no contact {name} in {list}"))
        .to_string()
}

/// The claimant contact's name (`bob-1a2b3c4d`) in a contact list.
fn claimant(list: &str, claims: &str) -> String {
    list.lines()
        .find(|l| l.contains(&format!("CLAIMS TO BE {claims}")))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no contact claims to be {claims} in {list}"))
        .to_string()
}

#[test]
fn a_stranger_using_a_contacts_name_cannot_take_it_over() {
    let net = Net::start(2);
    let alice = net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    let bobs_key = fingerprint_of(&net.ok("alice", &["contact", "list"]), "bob");

    // The reproduction: Mallory registers the name "bob" on Bob's own node and writes once.
    net.account_named("mallory", "bob", 1);
    net.ok("mallory", &["contact", "add", "alice", &alice]);
    net.ok("mallory", &["send", "alice", "hi, it's bob, new phone"]);
    // Across two nodes the letter may still be on its way when the send returns.
    let inbox = net.until("alice", &["inbox"], "claims to be bob");
    assert!(
        inbox.contains("WARNING:") && inbox.contains("claims to be bob"),
        "{inbox}"
    );
    assert!(!inbox.contains("\nbob: hi"), "never shown as bob: {inbox}");

    // Bob is still Bob's key; Mallory is a separate, unverified contact claiming the name.
    let list = net.ok("alice", &["contact", "list"]);
    assert_eq!(fingerprint_of(&list, "bob"), bobs_key, "{list}");
    let mallory_c = claimant(&list, "bob");
    assert_ne!(fingerprint_of(&list, &mallory_c), bobs_key);

    // Alice's next message to bob goes to Bob, not to Mallory.
    net.ok("alice", &["send", "bob", "for bob only"]);
    assert!(net.ok("bob", &["inbox"]).contains("alice: for bob only"));
    assert!(!net.ok("mallory", &["inbox"]).contains("for bob only"));

    // Accepting needs the claimant's safety number compared first: no flag, no change.
    let out = net.run("alice", &["contact", "accept", &mallory_c]);
    assert!(!out.status.success());
    // Alice rejects the impostor: it is gone and what it sends is dropped unread.
    net.ok("alice", &["contact", "reject", &mallory_c]);
    net.ok("mallory", &["send", "alice", "let me in"]);
    let inbox = net.ok("alice", &["inbox"]);
    assert!(!inbox.contains("let me in"), "{inbox}");
    assert!(!net.ok("alice", &["contact", "list"]).contains(&mallory_c));
}

#[test]
fn a_verified_contacts_new_key_shows_its_own_safety_number_and_moves_only_when_accepted() {
    let net = Net::start(1);
    let alice = net.account("alice", 0);
    let bob = net.account("bob", 0);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    net.ok("bob", &["contact", "add", "alice", &alice]);
    net.ok("alice", &["contact", "verify", "bob", "--confirm"]);
    let old_number = safety_code(&net.ok("alice", &["contact", "verify", "bob"]));

    // Bob on a new device (a new key) under the same name writes to Alice.
    net.account_named("bob-phone", "bob", 0);
    net.ok("bob-phone", &["contact", "add", "alice", &alice]);
    net.ok("bob-phone", &["send", "alice", "new phone, same bob"]);
    let inbox = net.ok("alice", &["inbox"]);
    assert!(inbox.contains("you verified bob"), "{inbox}");
    let claim = claimant(&net.ok("alice", &["contact", "list"]), "bob");

    // The claimant's number is the new key's: it matches what the new device shows, and
    // differs from the number of the key Alice verified.
    let shown = net.ok("alice", &["contact", "verify", &claim]);
    let new_number = safety_code(&shown);
    assert_eq!(
        new_number,
        safety_code(&net.ok("bob-phone", &["contact", "verify", "alice"]))
    );
    assert_ne!(new_number, old_number);
    assert!(shown.contains("claims to be bob"), "{shown}");

    // A wrong code (the old key's) is refused and moves nothing.
    let out = net.run(
        "alice",
        &["contact", "accept", &claim, "--code", &old_number],
    );
    assert!(!out.status.success());
    assert!(net.ok("alice", &["contact", "list"]).contains(&claim));

    // With the new key's code, bob moves to the new key, verified, history merged.
    net.ok(
        "alice",
        &["contact", "accept", &claim, "--code", &new_number],
    );
    let list = net.ok("alice", &["contact", "list"]);
    assert!(!list.contains(&claim), "{list}");
    assert!(list.contains("bob") && list.contains("verified"), "{list}");
    assert!(
        net.ok("alice", &["inbox", "--all"])
            .contains("bob: new phone, same bob")
    );
    net.ok("alice", &["send", "bob", "welcome back"]);
    assert!(
        net.ok("bob-phone", &["inbox"])
            .contains("alice: welcome back")
    );
    assert!(!net.ok("bob", &["inbox"]).contains("welcome back"));
    // And removing a contact works, history kept.
    net.ok("alice", &["contact", "remove", "bob"]);
    assert!(!net.ok("alice", &["contact", "list"]).contains("bob"));
    assert!(
        net.ok("alice", &["inbox", "--all"])
            .contains("welcome back")
    );
}

#[test]
fn message_text_cannot_rewrite_the_recipients_terminal() {
    let net = Net::start(1);
    net.account("alice", 0);
    let bob = net.account("bob", 0);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    // Move up a line, erase it, return; a window-title OSC; a bidi override; a forged line.
    let attack = "\u{1b}[1A\u{1b}[2K\rok \u{1b}]0;pwned\u{7} \u{202e}gnp.exe\nWARNING: all fine";
    net.ok("alice", &["send", "bob", attack]);
    let inbox = net.ok("bob", &["inbox"]);
    assert!(!inbox.contains('\u{1b}') && !inbox.contains('\u{7}') && !inbox.contains('\r'));
    assert!(!inbox.contains('\u{202e}'), "{inbox}");
    assert!(inbox.contains("␛[1A␛[2K␍ok"), "{inbox}");
    assert!(inbox.contains("<U+202E>gnp.exe"), "{inbox}");
    // The second line of the text is marked as a continuation, not a line of Hestia's own.
    assert!(
        !inbox.lines().any(|l| l.starts_with("WARNING: all fine")),
        "{inbox}"
    );
    let all = net.ok("bob", &["inbox", "--all"]);
    assert!(!all.contains('\u{1b}'));
    assert!(!net.ok("alice", &["status"]).contains('\u{1b}'));
}

#[test]
fn receipts_wait_their_delay_and_can_be_turned_off() {
    let net = Net::start(2);
    net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    net.ok("alice", &["send", "bob", "one"]);
    net.ok("bob", &["inbox"]);
    // The receipt did not leave with the acknowledgement: Bob's device holds it for its delay.
    let status = net.ok("alice", &["status"]);
    assert!(status.contains("delivered to their node"), "{status}");
    assert!(!status.contains("delivered to their device"), "{status}");
    net.until_receipt("bob", "alice");

    // Off: nothing is owed and nothing leaves, however often Bob reads.
    let off = net.ok("bob", &["account", "receipts", "off"]);
    assert!(off.contains("off"), "{off}");
    net.ok("alice", &["send", "bob", "two"]);
    for _ in 0..3 {
        net.ok("bob", &["inbox"]);
    }
    let status = net.ok("alice", &["status"]);
    let two = status.lines().find(|l| l.contains("\"two\"")).expect("two");
    assert!(two.contains("delivered to their node"), "{status}");
}

/// Every directory under `dir` is 0700 and every file 0600 or narrower.
fn assert_owner_only(dir: &Path, skip: &[&str]) {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {:o}", d.display(), mode & 0o777);
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.file_name().is_some_and(|n| n == *s)) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = e.metadata().unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is {:o}", p.display(), mode & 0o777);
                seen += 1;
            }
        }
    }
    assert!(seen > 3, "{} holds files", dir.display());
}

#[test]
fn device_node_and_bootstrap_files_are_for_their_owner_only() {
    let net = Net::start(1);
    net.account("alice", 0);
    assert_owner_only(&net.home("alice"), &[]);
    // process.log and the listen address are the test harness's own files.
    assert_owner_only(&net.node_dir(0), &["process.log"]);
    let key = net.tmp.path().join("bootstrap").join("bootstrap.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
}

/// Copies a directory tree (a device's data directory while no process has it open).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[test]
fn a_broken_session_is_reported_to_the_sender_and_replaced() {
    let net = Net::start(2);
    let alice = net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    net.ok("bob", &["contact", "add", "alice", &alice]);
    // Bob's device as it was before any session: restoring it later loses the session.
    let snapshot = net.tmp.path().join("bob-snapshot");
    copy_dir(&net.home("bob"), &snapshot);
    net.ok("alice", &["send", "bob", "one"]);
    assert!(net.ok("bob", &["inbox"]).contains("alice: one"));
    net.ok("bob", &["send", "alice", "two"]);
    assert!(net.ok("alice", &["inbox"]).contains("bob: two"));

    std::fs::remove_dir_all(net.home("bob")).unwrap();
    copy_dir(&snapshot, &net.home("bob"));
    // Alice's next message is in the old session, which Bob's device no longer has.
    net.ok("alice", &["send", "bob", "three"]);
    let inbox = net.ok("bob", &["inbox"]);
    assert!(inbox.contains("a new session has started"), "{inbox}");
    // Alice learns it: the message is marked failed, not "delivered".
    let inbox = net.ok("alice", &["inbox"]);
    assert!(inbox.contains("could not decrypt it"), "{inbox}");
    let status = net.ok("alice", &["status"]);
    let three = status
        .lines()
        .find(|l| l.contains("\"three\""))
        .expect("three");
    assert!(three.contains("send it again"), "{status}");
    // And the new session works both ways.
    net.ok("alice", &["send", "bob", "four"]);
    assert!(net.ok("bob", &["inbox"]).contains("alice: four"));
    net.ok("bob", &["send", "alice", "five"]);
    assert!(net.ok("alice", &["inbox"]).contains("bob: five"));
}
