//! Push wake-ups in the model. A phone registers a Web Push subscription with its home node
//! and drops its connection whenever the person is not using it; the node's push state machine
//! (the production one, in [`relay::Core`]) then wakes it when mail arrives, coalescing until
//! the phone has connected and drained its mailbox. The model plays the push service: a
//! wake-up request is accepted after [`PUSH_HTTP_MS`], and reaches the phone after a draw from
//! `push_latency_ms`; the woken phone connects, fetches and stays `wake_window_s`.
//!
//! What is measured: wake-ups sent, per phone and day, how long after the first waiting
//! envelope was sent a phone woke, and how precisely the push service (a third party that
//! sees every wake-up's time) learns when mail arrived: the time from the arrival that armed
//! a wake-up to the wake-up leaving the node, which the node's random delay
//! (`push_max_delay_ms`) widens.

use super::*;
use hestia_protocol::push::{AUTH_LEN, P256DH_LEN, Subscription};

/// A node's answer time from the push service (an HTTPS round trip).
pub(super) const PUSH_HTTP_MS: Millis = 100;
/// The model's nodes' VAPID public key: any uncompressed P-256 point shape will do, as no
/// request is signed.
pub(super) const MODEL_VAPID_KEY: [u8; 65] = {
    let mut k = [7u8; 65];
    k[0] = 0x04;
    k
};
/// The push service every phone's endpoint is on; the path names the phone.
const ENDPOINT_BASE: &str = "https://push.model.example/wake/";

#[derive(Default)]
pub(super) struct Pushes {
    /// Wake-ups the nodes sent, and those that found their phone already connected.
    pub(super) sent: u64,
    pub(super) redundant: u64,
    /// For each wake-up that woke a phone: time from the first envelope sent to it while it
    /// slept to the phone waking, in ms.
    pub(super) send_to_wake: Vec<f64>,
    /// For each wake-up: from the arrival at the node that armed it to the request leaving.
    pub(super) arrival_to_wake: Vec<f64>,
}

/// The subscription phone `u` registers.
pub(super) fn subscription(u: usize) -> Subscription {
    let mut p256dh = vec![5u8; P256DH_LEN];
    p256dh[0] = 0x04;
    Subscription {
        endpoint: format!("{ENDPOINT_BASE}{u}"),
        p256dh,
        auth: [9; AUTH_LEN],
    }
}

impl Shard {
    /// Node `n` hands a wake-up to the push service.
    pub(super) fn wake_out(&mut self, n: usize, wake: WakeId, endpoint: &str) {
        self.push.sent += 1;
        self.schedule(self.now + PUSH_HTTP_MS, Ev::WakeResult { node: n, wake });
        let Some(u) = endpoint
            .strip_prefix(ENDPOINT_BASE)
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|u| self.devices.holds(*u))
        else {
            return;
        };
        if let Some(at) = self.devices[u].arrived_since.take() {
            self.push.arrival_to_wake.push((self.now - at) as f64);
        }
        let (lo, hi) = self.sc.push_latency_ms;
        let latency = lo
            + if hi > lo {
                self.rng.random_range(0..=hi - lo)
            } else {
                0
            };
        self.schedule(self.now + latency, Ev::DeviceWake(u));
    }

    /// A wake-up reaches phone `u`.
    pub(super) fn device_woken(&mut self, u: usize) {
        let window = ms(self.sc.wake_window_s);
        if self.connected(u) {
            self.push.redundant += 1;
            if self.devices[u].awake {
                self.devices[u].awake_until = self.now + window;
                self.schedule(self.now + window, Ev::Sleep(u));
            }
            return;
        }
        if let Some(since) = self.devices[u].waiting_since {
            self.push.send_to_wake.push((self.now - since) as f64);
        }
        self.release_held(u);
        let d = &mut self.devices[u];
        d.awake = true;
        d.awake_until = self.now + window;
        self.schedule(self.now + window, Ev::Sleep(u));
        self.came_online(u, true);
    }

    /// A woken phone's window is over: it sleeps again unless the person or a call keeps it.
    pub(super) fn wake_window_ends(&mut self, u: usize) {
        let d = &self.devices[u];
        if !d.awake || self.now < d.awake_until {
            return;
        }
        self.release_held(u);
        self.devices[u].awake = false;
        self.sleep_if_idle(u);
    }
}
