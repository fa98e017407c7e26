//! `hestia chat` on a real terminal (a pseudo-terminal from util-linux `script`), against a real
//! node: it shows a message that arrives, sends what is typed, and gives the terminal back on
//! Ctrl-C.

use hestia_tests::{Net, hestia_bin};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_terminal_client_shows_what_arrives_sends_what_is_typed_and_quits_cleanly() {
    let net = Net::start(1);
    let alice = net.account("alice", 0);
    let bob = net.account("bob", 0);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    net.ok("bob", &["contact", "add", "alice", &alice]);
    net.ok("bob", &["send", "alice", "before the screen opened"]);

    let screen = net.tmp.path().join("alice-screen.out");
    let inner = format!(
        "stty rows 30 cols 100; exec {} --home {} chat",
        hestia_bin().display(),
        net.home("alice").display()
    );
    let mut chat = Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&screen).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("util-linux script");
    // What a person would see: the bytes so far through a terminal emulator of the same size.
    let shown = || {
        let size = |n: u16| std::num::NonZero::new(n).unwrap();
        let mut vt = vt100::Parser::new(size(30), size(100), 0);
        vt.process(&std::fs::read(&screen).unwrap_or_default());
        vt.screen().contents()
    };
    let raw = || String::from_utf8_lossy(&std::fs::read(&screen).unwrap_or_default()).into_owned();
    let until = Instant::now() + Duration::from_secs(40);
    let wait_for = |what: &str| {
        while !shown().contains(what) {
            assert!(
                Instant::now() < until,
                "never showed {what:?}:\n{}",
                shown()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("connected to");
    wait_for("before the screen");
    net.ok("bob", &["send", "alice", "while it is open"]);
    wait_for("while it is open");

    let keys = chat.stdin.as_mut().unwrap();
    keys.write_all(b"hello from the screen\r").unwrap();
    keys.flush().unwrap();
    let mut inbox = String::new();
    while !inbox.contains("hello from the screen") {
        assert!(Instant::now() < until, "bob never got it: {inbox}");
        std::thread::sleep(Duration::from_millis(200));
        inbox = net.ok("bob", &["inbox"]);
    }
    assert!(inbox.contains("alice: hello from the screen"), "{inbox}");

    keys.write_all(b"\x03").unwrap();
    keys.flush().unwrap();
    let status = loop {
        if let Some(s) = chat.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "Ctrl-C did not quit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // The alternate screen was left: the terminal is the user's again.
    assert!(
        raw().contains("\u{1b}[?1049l"),
        "the terminal was not restored"
    );
}
