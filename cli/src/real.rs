//! `hestia sim run --real`: the same scenario on the real stack, to check the model. Real nodes
//! (libp2p over loopback TCP, RocksDB in temporary directories) run in this process; each user
//! has two real client connections (one keeps a long-poll fetch open, one sends) and sends on
//! the scenario's Poisson schedule in real time. The model then runs the same scenario and seed,
//! and the two are compared: delivery ratio, and send-to-device latency percentiles.
//!
//! Real mode runs fault-free scenarios only (no crashes, partitions, loss or offline users),
//! at small scale, and in real time: a scenario's `duration_s` is spent waiting.

use crate::demo::start_local_node;
use anyhow::{Context, Result, bail};
use hestia_node::client::Connection;
use hestia_node::driver::now_millis;
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::identity::IdentityKey;
use hestia_protocol::wire::{ClientOp, ClientResponse, Outgoing};
use hestia_simulations::Scenario;
use rand::{Rng, RngExt, SeedableRng};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Real mode's bounds: it runs every node and two connections per user in this process.
pub const MAX_REAL_NODES: usize = 50;
pub const MAX_REAL_USERS: usize = 200;
pub const MAX_REAL_SECONDS: f64 = 300.0;
/// Agreement: delivery ratios within this, and p50/p90 latencies within this many ms. Loopback
/// has no configured latency and the model counts no processing time, so the latencies are
/// compared in absolute terms.
pub const RATIO_TOLERANCE: f64 = 0.02;
pub const LATENCY_TOLERANCE_MS: f64 = 25.0;

#[derive(Serialize)]
pub struct Side {
    pub messages_sent: u64,
    pub delivered_to_device: u64,
    pub delivery_ratio: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub seed: u64,
    pub real: Side,
    pub model: Side,
    pub ratio_tolerance: f64,
    pub latency_tolerance_ms: f64,
    pub agree: bool,
}

fn check(sc: &Scenario) -> Result<()> {
    if sc.nodes > MAX_REAL_NODES || sc.nodes * sc.users_per_node > MAX_REAL_USERS {
        bail!("--real runs at most {MAX_REAL_NODES} nodes and {MAX_REAL_USERS} users");
    }
    if sc.duration_s + sc.drain_s > MAX_REAL_SECONDS {
        bail!("--real runs in real time: duration_s + drain_s must be at most {MAX_REAL_SECONDS}");
    }
    if !sc.crashes.is_empty()
        || !sc.partitions.is_empty()
        || sc.link_loss > 0.0
        || sc.online_fraction < 1.0
    {
        bail!(
            "--real runs fault-free scenarios only: no crashes, partitions, link_loss or offline users"
        );
    }
    if sc.regions > 1
        || sc.link_bandwidth_mbps > 0.0
        || sc.diurnal_amplitude > 0.0
        || sc.cover_messages_per_user_per_hour > 0.0
        || sc.batching_delay_ms > 0
    {
        bail!(
            "--real does not reproduce regions, bandwidth limits, diurnal rates, cover traffic or \
             batching delays yet; run those in the model only"
        );
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn run(sc: Scenario, seed: u64, out: &Path) -> Result<Comparison> {
    check(&sc)?;
    let tmp = tempfile::tempdir()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut addrs = Vec::new();
    let mut peers = Vec::new();
    for i in 0..sc.nodes {
        let dir = tmp.path().join(format!("node{i}"));
        // Every node knows the first one; it introduces the rest (Kademlia, presence).
        let bootstrap = addrs.first().cloned().into_iter().collect();
        let node = start_local_node(
            &dir,
            bootstrap,
            hestia_node::relay::SendLimit::UNLIMITED,
            stopped.clone(),
        )
        .await?;
        peers.push(node.peer);
        addrs.push(node.addr);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let users = sc.nodes * sc.users_per_node;
    let keys: Vec<Arc<IdentityKey>> = (0..users)
        .map(|_| Arc::new(IdentityKey::generate(&mut rng)))
        .collect();
    let home = |u: usize| u / sc.users_per_node;
    let sent_at: Arc<Mutex<HashMap<EnvelopeId, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    // Devices stop before nodes, so no request is cut off by a node shutting down.
    let (stop_devices, devices_stopped) = tokio::sync::watch::channel(false);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (u, key) in keys.iter().enumerate() {
        let mut fetch = Connection::open(&addrs[home(u)]).await?;
        fetch
            .call(key, ClientOp::Register)
            .await
            .context("registering")?;
        let send = Connection::open(&addrs[home(u)]).await?;
        senders.push(send);
        let (key, sent_at, latencies, mut stop) = (
            key.clone(),
            sent_at.clone(),
            latencies.clone(),
            devices_stopped.clone(),
        );
        receivers.push(tokio::spawn(async move {
            loop {
                let op = ClientOp::Fetch {
                    limit: 256,
                    wait_ms: 1_000,
                };
                let answer = tokio::select! {
                    a = fetch.call(&key, op) => a?,
                    _ = stop.wait_for(|s| *s) => return Ok::<(), anyhow::Error>(()),
                };
                let ClientResponse::Envelopes(envs) = answer else {
                    continue;
                };
                if envs.is_empty() {
                    continue;
                }
                let now = Instant::now();
                let ids: Vec<EnvelopeId> = envs.iter().map(|e| e.id).collect();
                for id in &ids {
                    let t0 = sent_at.lock().expect("map").remove(id);
                    if let Some(t0) = t0 {
                        latencies
                            .lock()
                            .expect("list")
                            .push((now - t0).as_secs_f64() * 1000.0);
                    }
                }
                fetch.call(&key, ClientOp::Ack(ids)).await?;
            }
        }));
    }
    // Each user sends on its own Poisson schedule for duration_s.
    let mean_gap_s = 3600.0 / sc.messages_per_user_per_hour.max(1e-9);
    let mut send_tasks = Vec::new();
    let start = Instant::now();
    let duration = Duration::from_secs_f64(sc.duration_s);
    let sent_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (u, mut conn) in senders.into_iter().enumerate() {
        let key = keys[u].clone();
        let all_keys = keys.clone();
        let peers = peers.clone();
        let per_node = sc.users_per_node;
        let sent_at = sent_at.clone();
        let total = sent_total.clone();
        let mut urng = rand::rngs::StdRng::seed_from_u64(rng.next_u64());
        send_tasks.push(tokio::spawn(async move {
            let mut t = Duration::ZERO;
            loop {
                let gap = -urng.random::<f64>().max(1e-12).ln() * mean_gap_s;
                t += Duration::from_secs_f64(gap);
                if t >= duration {
                    return Ok::<(), anyhow::Error>(());
                }
                tokio::time::sleep_until((start + t).into()).await;
                let r = loop {
                    let r = urng.random_range(0..all_keys.len());
                    if r != u || all_keys.len() == 1 {
                        break r;
                    }
                };
                // As in the model, the body is opaque to everything measured here.
                let env = Envelope::seal_body(
                    &mut urng,
                    &all_keys[r].user_id(),
                    b"",
                    now_millis(),
                    hestia_protocol::envelope::DEFAULT_TTL_MS,
                )?;
                sent_at.lock().expect("map").insert(env.id, Instant::now());
                total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let to_node = peers[r / per_node].clone();
                conn.call(
                    &key,
                    ClientOp::Send(vec![Outgoing {
                        to_node,
                        envelope: env,
                    }]),
                )
                .await?;
            }
        }));
    }
    for t in send_tasks {
        t.await??;
    }
    // Drain: until every message arrived or drain_s passes.
    let deadline = Instant::now() + Duration::from_secs_f64(sc.drain_s);
    while !sent_at.lock().expect("map").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_devices.send(true);
    for r in receivers {
        r.await??;
    }
    let _ = stop.send(true);
    let sent = sent_total.load(std::sync::atomic::Ordering::Relaxed);
    let mut lat = latencies.lock().expect("list").clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let real = Side {
        messages_sent: sent,
        delivered_to_device: lat.len() as u64,
        delivery_ratio: if sent == 0 {
            1.0
        } else {
            lat.len() as f64 / sent as f64
        },
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
    };
    let o = hestia_simulations::run(sc.clone(), seed, |_, _| true);
    let m = &o.summary;
    let model = Side {
        messages_sent: m.messages_sent,
        delivered_to_device: m.delivered_to_device,
        delivery_ratio: m.delivery_ratio,
        p50_ms: m.latency_send_to_device.p50_ms,
        p90_ms: m.latency_send_to_device.p90_ms,
        p99_ms: m.latency_send_to_device.p99_ms,
    };
    let agree = (real.delivery_ratio - model.delivery_ratio).abs() <= RATIO_TOLERANCE
        && (real.p50_ms - model.p50_ms).abs() <= LATENCY_TOLERANCE_MS
        && (real.p90_ms - model.p90_ms).abs() <= LATENCY_TOLERANCE_MS;
    let c = Comparison {
        scenario: sc.name.clone(),
        seed,
        real,
        model,
        ratio_tolerance: RATIO_TOLERANCE,
        latency_tolerance_ms: LATENCY_TOLERANCE_MS,
        agree,
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("real.json"),
        serde_json::to_string_pretty(&c)? + "\n",
    )?;
    hestia_simulations::write_results(out, &o)?;
    Ok(c)
}
