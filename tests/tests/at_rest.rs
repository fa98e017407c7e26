//! A device's data encrypted at rest under a passphrase (issue 14), with the stock CLI against
//! two real nodes: what the disk holds, what a wrong or missing passphrase does, a change of
//! passphrase, and a device encrypted after it had history in clear.

use hestia_tests::{Net, files_containing};
use std::process::Output;
use std::time::{Duration, Instant};

const TEXT: &str = "at-rest canary: 2c9e rowan by the old mill";
const REPLY: &str = "reply canary: 81fd heron at low tide";
/// Alice's local name for Bob: a name is something a stolen disk must not give away either.
const BOBS_NAME: &str = "zebedee-the-cellist";
const PASS: &str = "correct horse battery";
const NEW_PASS: &str = "staple gun lighthouse";

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "{what}: one line, got {err}");
    err
}

/// Bytes of a hex string (a user key from an address).
fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Repeats `args` as `user` with passphrase `pass` until the output holds `needle`.
fn until(net: &Net, user: &str, pass: &str, args: &[&str], needle: &str) -> String {
    let start = Instant::now();
    loop {
        let out = ok(
            net.run_env(user, &[("HESTIA_PASSPHRASE", pass)], args),
            "reading",
        );
        if out.contains(needle) {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{user} never saw {needle:?}: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_passphrase_keeps_texts_names_and_keys_off_the_disk() {
    let net = Net::start(2);
    let pass = [("HESTIA_PASSPHRASE", PASS)];
    let alice_run = |args: &[&str]| net.run_env("alice", &pass, args);
    let node = net.node_addr(0);
    let created = ok(
        alice_run(&[
            "account",
            "create",
            "--node",
            &node,
            "--name",
            "alice",
            "--passphrase",
        ]),
        "account create --passphrase",
    );
    assert!(created.contains("account created"));
    let alice = ok(alice_run(&["account", "show", "--address"]), "show")
        .trim()
        .to_string();
    assert!(ok(alice_run(&["account", "show"]), "show").contains("data: encrypted at rest"));
    let bob = net.account("bob", 1);
    ok(
        alice_run(&["contact", "add", BOBS_NAME, &bob]),
        "contact add",
    );
    net.ok("bob", &["contact", "add", "alice", &alice]);
    ok(alice_run(&["send", BOBS_NAME, TEXT]), "send");
    net.until("bob", &["inbox", "--all"], TEXT);
    net.ok("bob", &["send", "alice", REPLY]);
    until(&net, "alice", PASS, &["inbox", "--all"], REPLY);

    // No passphrase, where a script cannot be asked: one line saying what to do.
    let err = refused(net.run("alice", &["inbox"]), "inbox without a passphrase");
    assert!(
        err.contains("encrypted") && err.contains("HESTIA_PASSPHRASE"),
        "{err}"
    );
    let err = refused(
        net.run_env("alice", &[("HESTIA_PASSPHRASE", "not the one")], &["inbox"]),
        "inbox with a wrong passphrase",
    );
    assert!(err.contains("wrong passphrase"), "{err}");

    // The disk: no message text either way, no contact name, not Bob's key.
    let bobs_key = unhex(bob.split('@').next().unwrap());
    let home = net.home("alice");
    for needle in [
        TEXT.as_bytes(),
        REPLY.as_bytes(),
        BOBS_NAME.as_bytes(),
        &bobs_key,
    ] {
        let hits = files_containing(&home, needle);
        assert!(hits.is_empty(), "found {needle:?} in {hits:?}");
    }
    // Bob's device, in clear, does hold them: the scan finds what is there.
    assert!(!files_containing(&net.home("bob"), TEXT.as_bytes()).is_empty());

    // A new passphrase: the old one no longer opens, everything reads back under the new one.
    let too_short = refused(
        net.run_env(
            "alice",
            &[
                ("HESTIA_PASSPHRASE", PASS),
                ("HESTIA_NEW_PASSPHRASE", "short"),
            ],
            &["account", "change-passphrase"],
        ),
        "a short passphrase",
    );
    assert!(too_short.contains("at least 8"), "{too_short}");
    ok(
        net.run_env(
            "alice",
            &[
                ("HESTIA_PASSPHRASE", PASS),
                ("HESTIA_NEW_PASSPHRASE", NEW_PASS),
            ],
            &["account", "change-passphrase"],
        ),
        "change-passphrase",
    );
    refused(alice_run(&["inbox"]), "the old passphrase");
    let all = until(&net, "alice", NEW_PASS, &["inbox", "--all"], REPLY);
    assert!(all.contains(TEXT), "{all}");
    let list = ok(
        net.run_env(
            "alice",
            &[("HESTIA_PASSPHRASE", NEW_PASS)],
            &["contact", "list"],
        ),
        "contact list",
    );
    assert!(list.contains(BOBS_NAME), "{list}");

    // Bob encrypts a device that had history in clear: afterwards its files hold none of it.
    ok(
        net.run_env(
            "bob",
            &[("HESTIA_PASSPHRASE", PASS)],
            &["account", "encrypt"],
        ),
        "account encrypt",
    );
    for needle in [TEXT.as_bytes(), REPLY.as_bytes()] {
        let hits = files_containing(&net.home("bob"), needle);
        assert!(hits.is_empty(), "found {needle:?} in {hits:?}");
    }
    until(&net, "bob", PASS, &["inbox", "--all"], TEXT);
    // And the conversation goes on.
    ok(
        net.run_env(
            "alice",
            &[("HESTIA_PASSPHRASE", NEW_PASS)],
            &["send", BOBS_NAME, "and on"],
        ),
        "send after the change",
    );
    until(&net, "bob", PASS, &["inbox", "--all"], "and on");
}
