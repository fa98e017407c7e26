//! Push wake-ups against a real Web Push service (web-push-testing, on loopback): real nodes,
//! real devices, the node's own VAPID key and RFC 8291 encryption.

use hestia_protocol::push::WAKE_BODY;
use hestia_tests::push_service::{PushService, PushSubscription, free_port};
use hestia_tests::{Net, WAIT};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Alice on node 0, Bob on node `bob_on` (nodes that accept loopback endpoints), each the
/// other's contact.
fn alice_and_bob(net: &Net, bob_on: usize) {
    let alice = net.account("alice", 0);
    let bob = net.account("bob", bob_on);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    net.ok("bob", &["contact", "add", "alice", &alice]);
}

/// The node's VAPID key as `hestia push status` prints it.
fn vapid_key(net: &Net, user: &str) -> String {
    let out = net.ok(user, &["push", "status"]);
    let line = out
        .lines()
        .find(|l| l.contains("applicationServerKey"))
        .unwrap_or_else(|| panic!("no push key in {out}"));
    line.rsplit(' ').next().unwrap().to_string()
}

fn register(net: &Net, user: &str, sub: &PushSubscription) -> String {
    net.ok(
        user,
        &[
            "push",
            "register",
            "--endpoint",
            &sub.endpoint,
            "--p256dh",
            &sub.p256dh,
            "--auth",
            &sub.auth,
        ],
    )
}

fn send(net: &Net, text: &str) {
    net.ok("alice", &["send", "bob", text, "--wait", "0"]);
}

#[test]
fn twenty_envelopes_wake_an_offline_device_once_and_the_next_after_a_drain_wakes_it_again() {
    let service = PushService::start();
    let net = Net::start_with(2, &["--push-allow-loopback"]);
    alice_and_bob(&net, 1);
    let sub = service.subscribe(&vapid_key(&net, "bob"));
    let out = register(&net, "bob", &sub);
    assert!(out.contains("registered"), "{out}");

    // Bob's device is not connected: his node wakes it once, whatever the number of envelopes.
    for i in 0..20 {
        send(&net, &format!("secret-push-text-{i}"));
    }
    let got = service.until_notifications(&sub, 1);
    std::thread::sleep(Duration::from_secs(2));
    let got_later = service.notifications(&sub);
    assert_eq!(got_later.len(), 1, "coalesced: {got_later:?}");
    // The body is the constant, and holds nothing of the messages.
    assert_eq!(got[0].as_bytes(), WAKE_BODY);
    assert!(!got[0].contains("secret"));
    let status = net.ok("bob", &["push", "status"]);
    assert!(status.contains("1 wake-up(s) sent"), "{status}");
    assert!(status.contains("woken, quiet"), "{status}");

    // Bob connects and reads everything; the next envelope wakes him again.
    let inbox = net.ok("bob", &["inbox"]);
    assert_eq!(inbox.matches("secret-push-text-").count(), 20, "{inbox}");
    send(&net, "secret-push-text-after");
    let got = service.until_notifications(&sub, 2);
    assert!(got.iter().all(|b| b.as_bytes() == WAKE_BODY), "{got:?}");
}

#[test]
fn a_subscription_the_service_expired_is_removed_after_its_410_and_mail_still_arrives() {
    let service = PushService::start();
    let net = Net::start_with(1, &["--push-allow-loopback"]);
    alice_and_bob(&net, 0);
    let sub = service.subscribe(&vapid_key(&net, "bob"));
    register(&net, "bob", &sub);
    service.expire(&sub);

    send(&net, "one");
    let status = net.until("bob", &["push", "status"], "removed by the push service");
    assert!(status.contains("HTTP 410"), "{status}");
    // Nothing more is sent to it: the state stays removed as more mail arrives, and survives
    // a restart of the node.
    send(&net, "two");
    let mut net = net;
    net.kill9(0);
    net.restart(0);
    let status = net.ok("bob", &["push", "status"]);
    assert!(
        status.contains("removed by the push service (HTTP 410)"),
        "{status}"
    );
    let inbox = net.ok("bob", &["inbox"]);
    assert!(inbox.contains("one") && inbox.contains("two"), "{inbox}");
    assert!(service.notifications(&sub).is_empty());
    // Unregistering clears it.
    let out = net.ok("bob", &["push", "unregister"]);
    assert!(out.contains("removed 1 subscription(s)"), "{out}");
    assert!(
        net.ok("bob", &["push", "status"])
            .contains("no push subscriptions")
    );
}

/// A push service that answers every request 503 and records when each came.
struct FailingService {
    port: u16,
    hits: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FailingService {
    fn start() -> FailingService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + 3 * WAIT;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        h.lock().unwrap().push(Instant::now());
                        answer_503(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FailingService {
            port,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> Vec<Instant> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for FailingService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (headers, then `content-length` bytes) and answers 503.
fn answer_503(stream: std::net::TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        line.clear();
    }
    let mut body = vec![0; length.min(8192)];
    let _ = reader.read_exact(&mut body);
    let mut stream = reader.into_inner();
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
}

#[test]
fn with_the_push_service_failing_or_down_mail_still_arrives_and_wake_ups_stop_after_bounded_retries()
 {
    let service = PushService::start();
    let failing = FailingService::start();
    let net = Net::start_with(1, &["--push-allow-loopback"]);
    alice_and_bob(&net, 0);
    // Real subscription keys (the node encrypts to them), pointed at a service answering 503,
    // and at a port where nothing listens (a push service that is down).
    let real = service.subscribe(&vapid_key(&net, "bob"));
    let mut broken = real.clone();
    broken.endpoint = format!("http://localhost:{}/push/broken", failing.port);
    register(&net, "bob", &broken);
    let mut down = real.clone();
    down.endpoint = format!("http://localhost:{}/push/down", free_port());
    register(&net, "bob", &down);

    for i in 0..3 {
        send(&net, &format!("kept-{i}"));
    }
    // Five attempts with doubling delays (1, 2, 4, 8 s, less up to a fifth of jitter), then no
    // more: wait until the fifth, then as long again as the last gap, and count.
    let start = Instant::now();
    while failing.hits().len() < relay_attempts() {
        assert!(
            start.elapsed() < WAIT,
            "only {} attempts",
            failing.hits().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(10));
    let hits = failing.hits();
    assert_eq!(hits.len(), relay_attempts(), "bounded");
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "backoff grows: {gaps:?}"
    );
    assert!(gaps[0] >= Duration::from_millis(700), "{gaps:?}");

    let status = net.ok("bob", &["push", "status"]);
    assert!(
        status.contains("5 failed attempt(s), last: HTTP 503"),
        "{status}"
    );
    assert!(
        status.contains("5 failed attempt(s), last: push service unreachable"),
        "{status}"
    );
    // The mail never waited on push.
    let inbox = net.ok("bob", &["inbox"]);
    for i in 0..3 {
        assert!(inbox.contains(&format!("kept-{i}")), "{inbox}");
    }
}

fn relay_attempts() -> usize {
    hestia_node::relay::MAX_WAKE_ATTEMPTS as usize
}

#[test]
fn endpoints_that_are_not_public_http_are_refused_with_a_clear_error() {
    // A node as an admin runs it: loopback endpoints refused too.
    let net = Net::start(1);
    net.account("bob", 0);
    let key =
        "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
    let auth = "tBHItJI5svbpez7KI4CCXg";
    let long = format!("https://push.example.org/{}", "a".repeat(1000));
    for (endpoint, says) in [
        ("ftp://push.example.org/x", "not an http:// or https:// URL"),
        ("javascript:alert(1)", "not an http:// or https:// URL"),
        (long.as_str(), "longer than 1000 bytes"),
        ("http://10.1.2.3/push", "private, loopback or link-local"),
        (
            "http://169.254.169.254/latest",
            "private, loopback or link-local",
        ),
        ("http://[::1]:8080/push", "private, loopback or link-local"),
        // A name that resolves to loopback.
        (
            "http://localhost:8090/notify/x",
            "private, loopback or link-local",
        ),
        ("https://user:pw@push.example.org/", "not a well-formed URL"),
    ] {
        let out = net.run(
            "bob",
            &[
                "push",
                "register",
                "--endpoint",
                endpoint,
                "--p256dh",
                key,
                "--auth",
                auth,
            ],
        );
        assert!(!out.status.success(), "{endpoint} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{endpoint}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let bad_key = net.run(
        "bob",
        &[
            "push",
            "register",
            "--endpoint",
            "https://push.example.org/x",
            "--p256dh",
            "AAAA",
            "--auth",
            auth,
        ],
    );
    assert!(String::from_utf8_lossy(&bad_key.stderr).contains("65-byte"));
    assert!(
        net.ok("bob", &["push", "status"])
            .contains("no push subscriptions")
    );
}
