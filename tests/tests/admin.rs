//! The admin's tools on real node processes: the admin socket's commands, invite-only
//! registration, suspension, metrics and health checks, federation policy, backups and
//! restores, and a clean shutdown under load.

use hestia_tests::{Net, hestia};
use serde_json::Value;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `GET path` on the node's metrics address: status code and body.
fn get(net: &Net, i: usize, path: &str) -> (u16, String) {
    let addr = std::fs::read_to_string(net.node_dir(i).join("metrics.addr")).unwrap();
    let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// Parses OpenMetrics text: every sample line is `name{labels} value`, the exposition ends
/// with `# EOF`; the samples by name and labels.
fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF:\n{text}");
    let mut out = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        out.insert(name.to_string(), v);
    }
    out
}

fn invite(net: &Net, args: &[&str]) -> (String, String) {
    let out = net.admin_ok(0, &[&["--json", "invite", "create"], args].concat());
    let v = &json_lines(&out)[0];
    (
        v["token"].as_str().unwrap().to_string(),
        v["invite"]["id"].as_str().unwrap().to_string(),
    )
}

fn create(net: &Net, user: &str, invite: Option<&str>) -> std::process::Output {
    let node = net.node_addr(0);
    let mut args = vec!["account", "create", "--node", &node, "--name", user];
    if let Some(t) = invite {
        args.extend(["--invite", t]);
    }
    net.run(user, &args)
}

#[test]
fn admin_commands_invites_suspension_and_metrics() {
    let net = Net::start_with(
        1,
        &[
            "--registration",
            "invite",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    // Invite-only: no token, a valid one, a used-up one, an expired one, a revoked one.
    let out = create(&net, "mallory", None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("by invite only"), "{}", stderr(&out));
    let (one, _) = invite(&net, &["--uses", "1", "--note", "for alice"]);
    assert!(create(&net, "alice", Some(&one)).status.success());
    let out = create(&net, "mallory", Some(&one));
    assert!(stderr(&out).contains("used up"), "{}", stderr(&out));
    let (short, _) = invite(&net, &["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let out = create(&net, "mallory", Some(&short));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    let (revoked, id) = invite(&net, &[]);
    assert!(
        net.admin_ok(0, &["invite", "revoke", &id])
            .contains("revoked")
    );
    let out = create(&net, "mallory", Some(&revoked));
    assert!(stderr(&out).contains("not valid"), "{}", stderr(&out));
    let out = create(&net, "mallory", Some("0123456789abcdef0123456789abcdef"));
    assert!(stderr(&out).contains("not valid"), "{}", stderr(&out));
    let (two, _) = invite(&net, &["--uses", "2", "--expires", "7d"]);
    assert!(create(&net, "bob", Some(&two)).status.success());
    let states: Vec<String> = json_lines(&net.admin_ok(0, &["--json", "invite", "list"]))
        .iter()
        .map(|i| i["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states,
        ["used up", "expired", "valid"],
        "the revoked one is gone"
    );

    let a = net.ok("alice", &["account", "show", "--address"]);
    let b = net.ok("bob", &["account", "show", "--address"]);
    net.ok("alice", &["contact", "add", "bob2", b.trim()]);
    net.ok("bob", &["contact", "add", "alice", a.trim()]);

    // Status and users.
    let status = &json_lines(&net.admin_ok(0, &["--json", "status"]))[0];
    assert_eq!(status["accounts"], 2);
    assert_eq!(status["registration"], "invite");
    let users = json_lines(&net.admin_ok(0, &["--json", "user", "list"]));
    assert_eq!(users.len(), 2);
    let alice_id = a.trim().split('@').next().unwrap().to_string();
    let shown = net.admin_ok(0, &["user", "show", &alice_id[..12]]);
    assert!(shown.contains(&alice_id), "{shown}");
    let out = net.admin(0, &["user", "show", "zz"]);
    assert!(
        !out.status.success() && stderr(&out).contains("hex digits"),
        "{}",
        stderr(&out)
    );

    // Metrics before and after traffic; health checks.
    let before = samples(&get(&net, 0, "/metrics").1);
    let received = "hestia_envelopes_received_total{source=\"device\"}";
    net.ok("alice", &["send", "bob2", "hello bob"]);
    let (code, text) = get(&net, 0, "/metrics");
    assert_eq!(code, 200);
    let after = samples(&text);
    assert!(
        after[received] > before.get(received).copied().unwrap_or(0.0),
        "{text}"
    );
    assert!(
        after.contains_key("hestia_store_write_seconds_count"),
        "{text}"
    );
    assert!(
        after.keys().any(|k| k.starts_with("hestia_libp2p_")),
        "libp2p's metrics share the registry"
    );
    assert_eq!(after["hestia_accounts"], 2.0);
    net.until("bob", &["inbox"], "hello bob");
    let delivered = samples(&get(&net, 0, "/metrics").1)["hestia_envelopes_delivered_total"];
    assert!(delivered >= 1.0);
    assert_eq!(get(&net, 0, "/healthz").0, 200);
    assert_eq!(get(&net, 0, "/readyz").0, 200);
    assert_eq!(get(&net, 0, "/nothing").0, 404);

    // Suspension: refused, and told so; then lifted.
    net.admin_ok(0, &["user", "suspend", &alice_id, "--note", "spam reports"]);
    let out = net.run("alice", &["send", "bob2", "while suspended"]);
    assert!(stderr(&out).contains("suspended"), "{}", stderr(&out));
    let out = net.run("alice", &["inbox"]);
    assert!(
        !out.status.success() && stderr(&out).contains("suspended"),
        "{}",
        stderr(&out)
    );
    let shown = &json_lines(&net.admin_ok(0, &["--json", "user", "show", &alice_id]))[0];
    assert_eq!(shown["suspended"]["note"], "spam reports");
    net.admin_ok(0, &["user", "unsuspend", &alice_id]);
    net.ok("alice", &["send", "bob2", "after the suspension"]);
    net.until("bob", &["inbox"], "after the suspension");

    // Log level: a filter is taken, nonsense is refused.
    net.admin_ok(0, &["log-level", "debug"]);
    let out = net.admin(0, &["log-level", "info,hestia=notalevel"]);
    assert!(!out.status.success(), "a bad filter is refused");

    // Federation lists.
    let peer = "12D3KooWGzXw9PvnqVxGJrG4Z1oB2LBmFm3s2oHU1Fh6FhFj7y3e";
    net.admin_ok(0, &["federation", "deny", peer]);
    let list = json_lines(&net.admin_ok(0, &["--json", "federation", "list"]));
    assert_eq!((list.len(), list[0]["rule"].as_str()), (1, Some("Deny")));
    net.admin_ok(0, &["federation", "clear", peer]);
    assert!(
        net.admin_ok(0, &["federation", "list"])
            .contains("every node")
    );
    let out = net.admin(0, &["federation", "deny", "not a node\u{1b}[31m"]);
    assert!(!out.status.success());

    // Deleting an account removes it and what it held; its device is told.
    let bob_id = b.trim().split('@').next().unwrap().to_string();
    net.ok("alice", &["send", "bob2", "held for bob"]);
    let out = net.admin(0, &["user", "delete", &bob_id]);
    assert!(stderr(&out).contains("--yes"), "asks for confirmation");
    assert!(
        net.admin_ok(0, &["user", "delete", &bob_id, "--yes"])
            .contains("deleted")
    );
    assert_eq!(
        json_lines(&net.admin_ok(0, &["--json", "user", "list"])).len(),
        1
    );
    let out = net.run("bob", &["inbox"]);
    assert!(!out.status.success(), "a deleted account fetches nothing");

    // Without a running node: one clear line.
    let out = hestia(&[
        "node",
        "admin",
        "--data-dir",
        "/nonexistent/hestia",
        "status",
    ]);
    assert!(
        stderr(&out).contains("no node is running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sighup_reloads_registration_from_the_config_file() {
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("node.toml");
    std::fs::write(&file, "registration = \"open\"\n").unwrap();
    let net = Net::start_with(1, &["--config", file.to_str().unwrap()]);
    assert!(create(&net, "alice", None).status.success());
    std::fs::write(
        &file,
        "registration = \"closed\"\nlog_level = \"info,hestia_node=debug\"\n",
    )
    .unwrap();
    net.nodes[0].as_ref().unwrap().signal("HUP");
    let log = net.node_dir(0).join("process.log");
    hestia_tests::wait_for_text(&log, "registration policy reloaded");
    hestia_tests::wait_for_text(&log, "log level reloaded");
    let out = create(&net, "bob", None);
    assert!(
        !out.status.success() && stderr(&out).contains("takes no new accounts"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_denied_node_is_refused_both_ways() {
    let net = Net::start(2);
    net.contacts_both_ways("alice", 0, "bob", 1);
    net.ok("alice", &["send", "bob", "before"]);
    net.until("bob", &["inbox"], "before");
    let node1 = net.node_peer(1);
    net.admin_ok(0, &["federation", "deny", &node1]);
    // From here to there: refused at once, and the sender is told why.
    let out = net.ok("alice", &["send", "bob", "to a denied node"]);
    assert!(out.contains("federate"), "{out}");
    // From there to here: their node's batch is refused, and its sender sees it.
    net.ok("bob", &["send", "alice", "from a denied node"]);
    net.until("bob", &["status"], "refused");
    let out = net.ok("alice", &["inbox"]);
    assert!(!out.contains("from a denied node"), "{out}");
    // Cleared: mail flows again.
    net.admin_ok(0, &["federation", "clear", &node1]);
    net.ok("alice", &["send", "bob", "after"]);
    net.until("bob", &["inbox"], "after");
}

/// Alice's sent and Bob's received copies of the load messages: each kept one arrives once.
fn until_load_arrives(net: &Net, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        net.ok("alice", &["status"]);
        net.ok("bob", &["inbox"]);
        let got_text = net.ok("bob", &["inbox", "--all"]);
        let got: Vec<usize> = (0..n)
            .map(|i| got_text.matches(&format!("load {i:02}")).count())
            .collect();
        assert!(
            got.iter().all(|c| *c <= 1),
            "a message twice: {got:?}\n{got_text}"
        );
        let sent = net.ok("alice", &["inbox", "--all"]);
        let kept = (0..n)
            .filter(|i| sent.contains(&format!("load {i:02}")))
            .count();
        if got.iter().sum::<usize>() == kept {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "load messages missing: {got:?} of {kept} kept\n{got_text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn clean_shutdown_under_load_then_backup_and_restore() {
    let mut net = Net::start(1);
    net.contacts_both_ways("alice", 0, "bob", 0);
    net.ok("alice", &["send", "bob", "m1 before the backup"]);
    net.until("bob", &["inbox"], "m1 before the backup");

    // Load while SIGTERM arrives: every send either was acknowledged (and arrives) or stays on
    // the device and goes later; none is lost, none doubled.
    let home = net.home("alice");
    let load = std::thread::spawn(move || {
        for n in 0..20 {
            let _ = hestia(&[
                "--home",
                home.to_str().unwrap(),
                "send",
                "bob",
                &format!("load {n:02}"),
            ]);
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (status, took) = net.terminate(0, 15);
    assert!(status.success(), "a clean shutdown exits 0: {status}");
    assert!(took < Duration::from_secs(8), "shut down in {took:?}");
    load.join().unwrap();
    let dir = net.node_dir(0);
    let dir = dir.to_str().unwrap().to_string();
    let out = hestia(&["node", "admin", "--data-dir", &dir, "status"]);
    assert!(
        stderr(&out).starts_with("error: no node is running"),
        "{}",
        stderr(&out)
    );
    net.restart(0);
    until_load_arrives(&net, 20);

    // A backup, then a message fetched and acknowledged, and a one-time prekey of Bob's
    // handed out to Carol, after it.
    let out = net.admin_ok(0, &["backup", "create"]);
    assert!(out.contains("backup 1"), "{out}");
    assert!(net.admin_ok(0, &["backup", "verify"]).contains("is sound"));
    assert!(net.admin_ok(0, &["backup", "list"]).contains("backup 1"));
    let bob_addr = net.ok("bob", &["account", "show", "--address"]);
    let bob_id = bob_addr.trim().split('@').next().unwrap().to_string();
    net.ok("alice", &["send", "bob", "m2 after the backup"]);
    net.until("bob", &["inbox"], "m2 after the backup");
    let carol = net.account("carol", 0);
    net.ok("carol", &["contact", "add", "bob", bob_addr.trim()]);
    net.ok("bob", &["contact", "add", "carol", carol.trim()]);
    net.ok("carol", &["send", "bob", "carol's first"]);
    net.until("bob", &["inbox"], "carol's first");

    // Restore refuses while the node runs; with it stopped, it restores.
    let out = hestia(&["node", "admin", "--data-dir", &dir, "backup", "restore"]);
    assert!(stderr(&out).contains("stop it first"), "{}", stderr(&out));
    let (status, _) = net.terminate(0, 15);
    assert!(status.success());
    let out = hestia(&["node", "admin", "--data-dir", &dir, "backup", "restore"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("restored backup 1"), "{text}");
    assert!(text.contains("one-time prekeys"), "{text}");
    net.restart(0);
    let shown = &json_lines(&net.admin_ok(0, &["--json", "user", "show", &bob_id]))[0];
    assert_eq!(
        shown["one_time_prekeys"], 0,
        "none of the old ones is handed out again"
    );
    // Bob's device sees it has none and publishes fresh ones. Mail acknowledged after the
    // backup comes again and the device drops it; mail acknowledged before does not come.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = net.ok("bob", &["inbox"]);
        assert!(!out.contains("m1 before"), "{out}");
        assert!(!out.contains("m2 after"), "{out}");
        assert!(!out.contains("carol's first"), "{out}");
        let shown = &json_lines(&net.admin_ok(0, &["--json", "user", "show", &bob_id]))[0];
        if shown["one_time_prekeys"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob never published prekeys again"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let all = net.ok("bob", &["inbox", "--all"]);
    assert_eq!(all.matches("m2 after the backup").count(), 1, "{all}");
    // Dave's first message reaches Bob through one of the fresh one-time prekeys.
    let dave = net.account("dave", 0);
    net.ok("dave", &["contact", "add", "bob", bob_addr.trim()]);
    net.ok("bob", &["contact", "add", "dave", dave.trim()]);
    net.ok("dave", &["send", "bob", "dave after the restore"]);
    net.until("bob", &["inbox"], "dave after the restore");
}
