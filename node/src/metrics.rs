//! The node's metrics and health checks: OpenMetrics text at `/metrics`, `/healthz` and
//! `/readyz`, on an admin listen address of its own (loopback unless the operator says
//! otherwise). One registry carries Hestia's metrics and libp2p's (libp2p-metrics); every
//! metric is listed in docs/operating.md.
//!
//! The HTTP side is a small, bounded responder (GET only, one request per connection, a few
//! KiB of request read within a timeout): the node's loop renders the answer, so a scrape sees
//! the core's counts as of one turn of the loop.

use crate::relay::{Core, Counters};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Longest request head read.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// A client that has not sent its request head by then is dropped.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 8;

type Labels = Vec<(String, String)>;

/// What the HTTP side asks the node's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Metrics,
    /// The loop answers at all.
    Health,
    /// The node is listening and not shutting down.
    Ready,
}

pub struct HttpCall {
    pub probe: Probe,
    pub reply: oneshot::Sender<(u16, String)>,
}

/// The registry and Hestia's metrics in it.
pub struct Metrics {
    registry: Registry,
    pub libp2p: libp2p::metrics::Metrics,
    received: Family<Labels, Counter>,
    relayed: Counter,
    delivered: Counter,
    expired: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    federation_failures: Family<Labels, Counter>,
    refused_input: Family<Labels, Counter>,
    mailbox_envelopes: Gauge,
    mailbox_bytes: Gauge,
    outbox_envelopes: Gauge,
    accounts: Gauge,
    connected_devices: Gauge,
    connected_peers: Gauge,
    blob_bytes: Gauge,
    write_seconds: Histogram,
    /// The core's totals at the last scrape (counters move by the difference).
    last: Counters,
    last_refused_input: BTreeMap<&'static str, u64>,
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

fn advance(c: &Counter, last: u64, now: u64) {
    c.inc_by(now.saturating_sub(last));
}

fn advance_family(
    f: &Family<Labels, Counter>,
    key: &str,
    last: &BTreeMap<&'static str, u64>,
    now: &BTreeMap<&'static str, u64>,
) {
    for (reason, n) in now {
        let before = last.get(reason).copied().unwrap_or(0);
        advance(&f.get_or_create(&label(key, reason)), before, *n);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hestia");
        let libp2p = libp2p::metrics::Metrics::new(registry.sub_registry_with_prefix("libp2p"));
        let m = Metrics {
            libp2p,
            received: Family::default(),
            relayed: Counter::default(),
            delivered: Counter::default(),
            expired: Family::default(),
            refused: Family::default(),
            federation_failures: Family::default(),
            refused_input: Family::default(),
            mailbox_envelopes: Gauge::default(),
            mailbox_bytes: Gauge::default(),
            outbox_envelopes: Gauge::default(),
            accounts: Gauge::default(),
            connected_devices: Gauge::default(),
            connected_peers: Gauge::default(),
            blob_bytes: Gauge::default(),
            // 100 µs to ~3 s.
            write_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            last: Counters::default(),
            last_refused_input: BTreeMap::new(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "envelopes_received",
            "Envelopes accepted, by source (device: this node's users; node: other nodes)",
            m.received.clone(),
        );
        r.register(
            "envelopes_relayed",
            "Envelopes another node accepted from this node's outboxes",
            m.relayed.clone(),
        );
        r.register(
            "envelopes_delivered",
            "Envelopes a local device acknowledged",
            m.delivered.clone(),
        );
        r.register(
            "envelopes_expired",
            "Envelopes dropped at their expiry, by where they waited (mailbox, outbox)",
            m.expired.clone(),
        );
        r.register(
            "envelopes_refused",
            "Envelopes and requests refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "federation_failures",
            "Outbound federation requests that failed, by why",
            m.federation_failures.clone(),
        );
        r.register(
            "input_refused",
            "Frames refused by the wire codec, by reason (oversized, malformed, too_slow, over_budget)",
            m.refused_input.clone(),
        );
        r.register(
            "mailbox_envelopes",
            "Envelopes held for local users",
            m.mailbox_envelopes.clone(),
        );
        r.register(
            "mailbox_bytes",
            "Body bytes held for local users",
            m.mailbox_bytes.clone(),
        );
        r.register(
            "outbox_envelopes",
            "Envelopes waiting for other nodes",
            m.outbox_envelopes.clone(),
        );
        r.register("accounts", "Local accounts", m.accounts.clone());
        r.register(
            "connected_devices",
            "Device connections with an open session",
            m.connected_devices.clone(),
        );
        r.register(
            "connected_peers",
            "Peers (nodes and devices) with a connection",
            m.connected_peers.clone(),
        );
        r.register(
            "blob_bytes",
            "Sealed file bytes held for uploads",
            m.blob_bytes.clone(),
        );
        r.register(
            "store_write_seconds",
            "Time to make one group commit durable (a synced RocksDB write batch)",
            m.write_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One group commit took `secs`.
    pub fn record_write(&self, secs: f64) {
        self.write_seconds.observe(secs);
    }

    /// The OpenMetrics text of every metric, with the core's counts as of now.
    pub fn render(&mut self, core: &Core, connected_peers: usize) -> String {
        let c = core.counters().clone();
        let l = &self.last;
        advance(
            &self.received.get_or_create(&label("source", "device")),
            l.received_from_devices,
            c.received_from_devices,
        );
        advance(
            &self.received.get_or_create(&label("source", "node")),
            l.received_from_nodes,
            c.received_from_nodes,
        );
        advance(&self.relayed, l.relayed, c.relayed);
        advance(&self.delivered, l.delivered, c.delivered);
        advance(
            &self.expired.get_or_create(&label("where", "mailbox")),
            l.expired_mailbox,
            c.expired_mailbox,
        );
        advance(
            &self.expired.get_or_create(&label("where", "outbox")),
            l.expired_outbox,
            c.expired_outbox,
        );
        advance_family(&self.refused, "reason", &l.refused, &c.refused);
        advance_family(
            &self.federation_failures,
            "reason",
            &l.federation_failures,
            &c.federation_failures,
        );
        self.last = c;
        let refused: BTreeMap<&'static str, u64> = crate::frame::refused_frames_by_reason()
            .into_iter()
            .collect();
        advance_family(
            &self.refused_input,
            "reason",
            &self.last_refused_input,
            &refused,
        );
        self.last_refused_input = refused;
        let s = core.admin_status();
        let g = |g: &Gauge, v: u64| {
            g.set(v.min(i64::MAX as u64) as i64);
        };
        g(&self.mailbox_envelopes, s.mailbox_envelopes as u64);
        g(&self.mailbox_bytes, s.mailbox_bytes);
        g(&self.outbox_envelopes, s.outbox_envelopes as u64);
        g(&self.accounts, s.accounts as u64);
        g(&self.connected_devices, s.connected_devices as u64);
        g(&self.connected_peers, connected_peers as u64);
        g(&self.blob_bytes, s.blob_bytes);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the node's loop goes away.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<HttpCall>) {
    crate::local_server::accept_loop(
        listener,
        MAX_CONNECTIONS,
        calls,
        |stream, calls| async move {
            let _ = respond(stream, calls).await;
        },
    )
    .await
}

async fn respond(mut stream: TcpStream, calls: mpsc::Sender<HttpCall>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(READ_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") | ("GET", "/healthz") | ("GET", "/readyz") => {
            let probe = match path {
                "/metrics" => Probe::Metrics,
                "/healthz" => Probe::Health,
                _ => Probe::Ready,
            };
            let (reply, answer) = oneshot::channel();
            let answered = match calls.send(HttpCall { probe, reply }).await {
                Ok(()) => tokio::time::timeout(Duration::from_secs(5), answer)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            let (status, body) =
                answered.unwrap_or_else(|| (503, "the node's loop does not answer\n".to_string()));
            let kind = if probe == Probe::Metrics && status == 200 {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; charset=utf-8"
            };
            (status, kind, body)
        }
        ("GET", _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "GET only\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
