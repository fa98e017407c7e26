//! A real Web Push service for the push tests: the npm package web-push-testing (installed by
//! scripts/setup.sh), started on a free loopback port and stopped by its pid. It checks each
//! wake-up's VAPID token against the subscription's key, decrypts its aes128gcm body, answers
//! 201 (or 410 once a subscription is expired), and lists what it received.

use crate::WAIT;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/setup.sh installs the service.
pub fn install_dir() -> PathBuf {
    match std::env::var_os("HESTIA_PUSH_SERVICE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/hestia/push-service"),
    }
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A subscription the service made: what a device registers with its node.
#[derive(Clone, Debug)]
pub struct PushSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    /// The service's name for it (to list notifications or expire it).
    pub client_hash: String,
}

/// The running service; stopped (by its pid) when dropped.
pub struct PushService {
    child: Child,
    pub port: u16,
    agent: ureq::Agent,
}

impl PushService {
    pub fn start() -> PushService {
        let dir = install_dir();
        let server = dir.join("node_modules/web-push-testing/src/bin/server.js");
        assert!(
            server.exists(),
            "no web-push-testing at {}: run scripts/setup.sh",
            dir.display()
        );
        let port = free_port();
        let child = Command::new("node")
            .arg("-r")
            .arg(dir.join("loopback.js"))
            .arg(&server)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting node (web-push-testing)");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        let service = PushService {
            child,
            port,
            agent: config.into(),
        };
        let start = Instant::now();
        while service.post("/status", "{}").map(|(s, _)| s) != Some(200) {
            assert!(start.elapsed() < WAIT, "web-push-testing did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn post(&self, path: &str, json: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut r = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(json)
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.body_mut().read_to_string().unwrap_or_default()))
    }

    /// A new subscription for a node whose VAPID public key is `vapid_key` (base64url).
    pub fn subscribe(&self, vapid_key: &str) -> PushSubscription {
        let body = serde_json::json!({
            "userVisibleOnly": "true",
            "applicationServerKey": vapid_key,
        });
        let (status, text) = self
            .post("/subscribe", &body.to_string())
            .expect("web-push-testing answers");
        assert_eq!(status, 200, "subscribe: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let d = &v["data"];
        let s = |v: &serde_json::Value| v.as_str().expect("a string").to_string();
        PushSubscription {
            endpoint: s(&d["endpoint"]),
            p256dh: s(&d["keys"]["p256dh"]),
            auth: s(&d["keys"]["auth"]),
            client_hash: s(&d["clientHash"]),
        }
    }

    /// The decrypted bodies of every notification the subscription received, in order.
    pub fn notifications(&self, sub: &PushSubscription) -> Vec<String> {
        let body = serde_json::json!({ "clientHash": sub.client_hash });
        let (status, text) = self
            .post("/get-notifications", &body.to_string())
            .expect("web-push-testing answers");
        assert_eq!(status, 200, "get-notifications: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["data"]["messages"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| m.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits until the subscription has received `n` notifications; returns them.
    pub fn until_notifications(&self, sub: &PushSubscription, n: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let got = self.notifications(sub);
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < WAIT,
                "{} notification(s) arrived, not {n}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Marks the subscription expired: the service answers 410 to it from now on.
    pub fn expire(&self, sub: &PushSubscription) {
        let path = format!("/expire-subscription/{}", sub.client_hash);
        let (status, text) = self.post(&path, "{}").expect("web-push-testing answers");
        assert_eq!(status, 200, "expire: {text}");
    }
}

impl Drop for PushService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
