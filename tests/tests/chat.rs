//! `hestia chat` on a real terminal against real nodes: in a pseudo-terminal from util-linux
//! `script` read back through a terminal emulator, and in tmux as a person would use it
//! (send-keys, capture-pane): messages both ways, the delivery mark reaching "on their
//! device", a call rung and answered, and the terminal given back on Ctrl-C.

use hestia_tests::{Net, hestia_bin, wait_exit};
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
    let status = wait_exit(&mut chat, 20, "hestia chat after Ctrl-C");
    assert!(status.success(), "{status}");
    // The alternate screen was left: the terminal is the user's again.
    assert!(
        raw().contains("\u{1b}[?1049l"),
        "the terminal was not restored"
    );
}

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A session running `cmd` in directory `dir`.
    fn start(name: &str, dir: &std::path::Path, cmd: &str) -> Tmux {
        let t = Tmux {
            socket: format!("hestia-test-{}-{name}", std::process::id()),
        };
        let dir = dir.to_str().unwrap();
        let out = t.run(&["new-session", "-d", "-x", "110", "-y", "30", "-c", dir, cmd]);
        assert!(out.status.success(), "tmux: {out:?}");
        t
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux")
    }

    /// What the pane shows now.
    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let out = self.run(&[&["send-keys"][..], keys].concat());
        assert!(out.status.success(), "send-keys: {out:?}");
    }

    /// Waits until the pane shows `what`, doing `meanwhile` between looks; the screen.
    fn wait_for(&self, what: &str, mut meanwhile: impl FnMut()) -> String {
        let until = Instant::now() + Duration::from_secs(40);
        loop {
            let s = self.capture();
            if s.contains(what) {
                return s;
            }
            assert!(Instant::now() < until, "never showed {what:?}:\n{s}");
            meanwhile();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn in_tmux_across_two_nodes_messages_files_the_device_mark_and_a_call() {
    let net = Net::start_with_call_relays(2);
    net.contacts_both_ways("alice", 0, "bob", 1);
    // Bob's device sends its receipt within a second of reading.
    net.ok("bob", &["account", "receipts", "on", "--max-delay", "1"]);
    let cmd = format!(
        "{} --home {} chat",
        hestia_bin().display(),
        net.home("alice").display()
    );
    let downloads = net.tmp.path().join("alice-downloads");
    std::fs::create_dir(&downloads).unwrap();
    let tmux = Tmux::start("alice", &downloads, &cmd);
    tmux.wait_for("connected to", || {});

    // Bob writes; it appears on Alice's screen while it is open.
    net.ok("bob", &["send", "alice", "live from node two"]);
    tmux.wait_for("bob: live from node two", || {});

    // Alice types; Bob reads it; the mark beside it moves to "on their device" (✓✓).
    tmux.keys(&["-l", "typed in tmux"]);
    tmux.keys(&["Enter"]);
    let mut seen = String::new();
    let screen = tmux.wait_for("typed in tmux  ✓✓", || {
        if !seen.contains("typed in tmux") {
            seen = net.ok("bob", &["inbox"]);
        } else {
            // Receipts leave only while Bob's device runs a command.
            net.ok("bob", &["inbox"]);
        }
    });
    assert!(seen.contains("alice: typed in tmux"), "{seen}\n{screen}");

    // Files both ways: Bob's shows on Alice's screen and Ctrl-G fetches it where chat runs;
    // Alice's, typed as /file PATH, reaches Bob.
    let bobs = net.tmp.path().join("minutes-from-bob.txt");
    std::fs::write(&bobs, "minutes of the meeting\n".repeat(5000)).unwrap();
    net.ok("bob", &["send", "alice", "--file", bobs.to_str().unwrap()]);
    tmux.wait_for("minutes-from-bob.txt", || {});
    tmux.keys(&["C-g"]);
    tmux.wait_for("verified, at", || {});
    assert_eq!(
        std::fs::read(downloads.join("minutes-from-bob.txt")).unwrap(),
        std::fs::read(&bobs).unwrap()
    );
    let alices = net.tmp.path().join("agenda-from-alice.txt");
    std::fs::write(&alices, "agenda\n".repeat(3000)).unwrap();
    tmux.keys(&["-l", &format!("/file {}", alices.display())]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("sent agenda-from-alice.txt", || {});
    net.until("bob", &["inbox", "--all"], "agenda-from-alice.txt");

    // Bob rings; Alice's screen says so; Ctrl-A answers; the call runs and ends.
    let (mut caller, out) = net.spawn_client(
        "bob",
        &["call", "alice", "--audio", "tone:440", "--max-secs", "2"],
    );
    tmux.wait_for("bob is calling", || {});
    tmux.keys(&["C-a"]);
    tmux.wait_for("in a call with bob", || {});
    let status = wait_exit(&mut caller, 30, "the call");
    let said = std::fs::read_to_string(&out).unwrap();
    assert!(status.success(), "{said}");
    assert!(said.contains("connected"), "{said}");
    assert!(said.contains("call ended after 0:02"), "{said}");
    let screen = tmux.wait_for("call ended after", || {});
    assert!(
        !screen.contains("Ctrl-A answer"),
        "the call bar is gone:\n{screen}"
    );

    // Ctrl-C gives the terminal back.
    tmux.keys(&["C-c"]);
    let until = Instant::now() + Duration::from_secs(20);
    while tmux.run(&["has-session"]).status.success() {
        assert!(Instant::now() < until, "Ctrl-C did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn in_tmux_a_message_request_is_accepted_and_a_strangers_key_rejected_with_keys() {
    let net = Net::start(1);
    net.contacts_both_ways("alice", 0, "bob", 0);
    let alice = net.ok("alice", &["account", "show", "--address"]);
    // Two strangers know Alice's address; she knows neither.
    for (who, text) in [("carol", "hello from carol"), ("dave", "buy now from dave")] {
        net.account(who, 0);
        net.ok(who, &["contact", "add", "alice", alice.trim()]);
        net.ok(who, &["send", "alice", text]);
    }
    let cmd = format!(
        "{} --home {} chat",
        hestia_bin().display(),
        net.home("alice").display()
    );
    let tmux = Tmux::start("requests", net.tmp.path(), &cmd);
    tmux.wait_for("connected to", || {});
    tmux.wait_for("dave", || {});
    // Contacts are listed by name: bob, carol, dave. Tab to carol: her request is explained.
    tmux.keys(&["Tab"]);
    tmux.wait_for("hello from carol", || {});
    tmux.wait_for("a message request from a key you do not know", || {});
    tmux.keys(&["C-y"]);
    tmux.wait_for("carol is a contact now (unverified)", || {});
    // Tab to dave: one Ctrl-X asks, a second rejects.
    tmux.keys(&["Tab"]);
    tmux.wait_for("buy now from dave", || {});
    tmux.keys(&["C-x"]);
    tmux.wait_for("Ctrl-X again to reject", || {});
    tmux.keys(&["C-x"]);
    tmux.wait_for("dave's key rejected", || {});
    tmux.keys(&["C-c"]);
    let until = Instant::now() + Duration::from_secs(20);
    while tmux.run(&["has-session"]).status.success() {
        assert!(Instant::now() < until, "Ctrl-C did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the keys did is stored: carol is a contact, not a request; dave is gone, and what
    // he sends now is dropped unread.
    let contacts = net.ok("alice", &["contact", "list"]);
    let carol = contacts.lines().find(|l| l.contains("carol")).unwrap_or("");
    assert!(
        !carol.is_empty() && !carol.contains("MESSAGE REQUEST"),
        "{contacts}"
    );
    assert!(!contacts.contains("dave"), "{contacts}");
    net.ok("dave", &["send", "alice", "second try from dave"]);
    net.ok("carol", &["send", "alice", "carol again"]);
    let inbox = net.until("alice", &["inbox"], "carol again");
    assert!(!inbox.contains("second try from dave"), "{inbox}");
}
