//! `--json` on every reading command: each line parses as a JSON object, with ids and times,
//! and text from other users never reaches the terminal raw.

use hestia_tests::Net;
use serde_json::Value;

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn every_reading_command_prints_one_json_object_per_line() {
    let net = Net::start(1);
    net.account("alice", 0);
    let bob = net.account("bob", 0);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    net.ok("alice", &["send", "bob", "hello \u{1b}[2J json"]);
    let file = net.tmp.path().join("notes.txt");
    std::fs::write(&file, b"some notes").unwrap();
    net.ok("alice", &["send", "bob", "--file", file.to_str().unwrap()]);

    let me = lines(&net.ok("alice", &["--json", "account", "show"]));
    assert_eq!(me[0]["name"], "alice");
    assert!(me[0]["key"].as_str().is_some_and(|k| !k.is_empty()));

    let contacts = lines(&net.ok("alice", &["--json", "contact", "list"]));
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["name"], "bob");
    assert_eq!(contacts[0]["trust"], "unverified");

    let raw = net.run("bob", &["--json", "inbox"]);
    assert!(
        !raw.stdout.contains(&0x1b),
        "an escape reached the terminal"
    );
    let inbox = lines(&String::from_utf8_lossy(&raw.stdout));
    let messages: Vec<&Value> = inbox.iter().map(|e| &e["message"]).collect();
    let text = messages
        .iter()
        .find(|m| m["text"].as_str().is_some_and(|t| t.contains("json")))
        .expect("the text message");
    assert_eq!(text["text"], "hello \u{1b}[2J json");
    assert_eq!(text["direction"], "in");
    assert_eq!(text["id"].as_str().unwrap().len(), 32);
    assert!(text["at"].as_u64().unwrap() > 1_700_000_000_000);
    let with_file = messages
        .iter()
        .find(|m| m["file"].is_object())
        .expect("the file message");
    assert_eq!(with_file["file"]["name"], "notes.txt");
    assert_eq!(with_file["file"]["state"], "received");

    let status = lines(&net.ok("alice", &["--json", "status"]));
    assert!(
        status
            .iter()
            .filter(|e| e["event"] == "status")
            .all(|e| e["message"]["state"]["name"].is_string()),
        "{status:?}"
    );

    let files = lines(&net.ok("bob", &["--json", "file", "list"]));
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["size"], 10);

    let push = lines(&net.ok("bob", &["--json", "push", "status"]));
    assert!(push[0]["vapid_key"].is_string());
    assert_eq!(push[0]["subscriptions"], serde_json::json!([]));

    let history = lines(&net.ok("bob", &["--json", "inbox", "--all"]));
    assert!(history.iter().any(|e| e["event"] == "history"));
}
