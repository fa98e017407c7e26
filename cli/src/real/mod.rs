//! `hestia sim run --real`: the same scenario on the real stack, to check the model. The model
//! runs first, keeping every message it sent (a traced run). Then every node is a real
//! `hestia node run` process (libp2p over TCP, RocksDB in a temporary directory); each user has
//! two real client connections in this process (one keeps a long-poll fetch open, one sends) and
//! replays exactly the messages the model's user sent, at the same times, to the same
//! recipients, in real time. The two are compared: delivery ratio, and the send-to-device
//! latency distributions (see [`cdf_gap`]), with every message's two fates in
//! real_messages.csv.
//!
//! Faults are real too. A crash is SIGKILL of the node's process; it is started again on the
//! same data directory after `down_s`. With `disk_loss` the database is deleted before the
//! restart and only the node key is put back (an operator restoring the key from a backup, as
//! the model keeps the node's identity). A partition needs network namespaces (so root): each
//! node then runs in its own namespace, linked to a router namespace (addresses in
//! 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks; no packet leaves the machine),
//! and for the partition's span the router silently drops packets between the two sides, as a
//! cut in the middle of a network does. Devices stay reachable from their home node.
//!
//! The nodes die with this process however it ends (a parent-death signal, SIGKILL included);
//! a run's temporary directory and namespaces carry its process id, so the next run removes
//! what a killed one left. Ctrl-C stops sending, stops the nodes, removes the namespaces and
//! the directory, and writes what the run reached, marked `"interrupted": true`.
//!
//! `HESTIA_REAL_KEEP=1` keeps the nodes' directories and logs (the path is printed);
//! `HESTIA_REAL_NODE_LOG` sets the nodes' `RUST_LOG` (default `warn,libp2p=error`).
//!
//! Files are reproduced too (see [`files`]): each file the model's users began is uploaded,
//! announced and fetched across the federation at the same times, and the two sides'
//! begin-to-fetched times are compared as the messages' latencies are.
//!
//! Not reproduced (refused with a message): link loss, offline users, regions, link bandwidth,
//! diurnal rates, cover traffic, batching, phones and calls. Bounded: at most 50 nodes, 200
//! users, 300 s and [`MAX_REAL_FILES`] files of at most [`MAX_REAL_FILE_MEDIAN`] median.

mod compare;
mod files;
mod fleet;

pub use compare::{Comparison, FileComparison, Side, report};
use compare::{cdf_gap, cdf_table, file_side, percentile};
use fleet::{Fleet, Namespaces, NodeProc, TMP_PREFIX, free_loopback_port, remove_stale_dirs};

use anyhow::{Context, Result, bail};
use hestia_node::client::{ClientLibError, Connection};
use hestia_node::driver::{now_millis, peer_of};
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::identity::IdentityKey;
use hestia_protocol::wire::{ClientError, ClientOp, ClientResponse, Outgoing};
use hestia_simulations::Scenario;
use libp2p::Multiaddr;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Real mode's bounds: every node is a process on this machine and every user two connections.
pub const MAX_REAL_NODES: usize = 50;
pub const MAX_REAL_USERS: usize = 200;
pub const MAX_REAL_SECONDS: f64 = 300.0;
/// Files the scenario may be expected to begin, and their median size: every chunk is a
/// synced write on this machine's disk.
pub const MAX_REAL_FILES: f64 = 500.0;
pub const MAX_REAL_FILE_MEDIAN: f64 = 8.0 * 1024.0 * 1024.0;
/// Files are compared with this much horizontal slack instead of `LATENCY_TOLERANCE_MS`: the
/// model counts no processing time, and a real file costs a synced write per chunk on the
/// holder and work on both nodes' connections per chunk.
pub const FILE_LATENCY_TOLERANCE_MS: f64 = 150.0;
/// Agreement: delivery ratios within this, and the send-to-device latency CDFs within
/// `LATENCY_TOLERANCE_MS` horizontally and `CDF_TOLERANCE` vertically (see [`cdf_gap`]). The
/// model counts no processing time and loopback has none of the configured latency, so
/// latencies are compared in absolute terms.
pub const RATIO_TOLERANCE: f64 = 0.02;
pub const LATENCY_TOLERANCE_MS: f64 = 25.0;
pub const CDF_TOLERANCE: f64 = 0.05;
/// A device whose home node does not take a message within this (reconnecting meanwhile)
/// counts it as not sent, as the model does while the home node is down.
const SEND_GIVE_UP: Duration = Duration::from_secs(2);
const RECONNECT_EVERY: Duration =
    Duration::from_millis(hestia_simulations::sim::DEVICE_RECONNECT_MS);
/// The port every node listens on inside its own network namespace.
const NAMESPACE_PORT: u16 = 4001;

fn check(sc: &Scenario) -> Result<()> {
    if sc.nodes > MAX_REAL_NODES || sc.nodes * sc.users_per_node > MAX_REAL_USERS {
        bail!("--real runs at most {MAX_REAL_NODES} nodes and {MAX_REAL_USERS} users");
    }
    if sc.duration_s + sc.drain_s > MAX_REAL_SECONDS {
        bail!("--real runs in real time: duration_s + drain_s must be at most {MAX_REAL_SECONDS}");
    }
    if sc.link_loss > 0.0 || sc.online_fraction < 1.0 {
        bail!(
            "--real reproduces crashes and partitions but not link_loss or offline users: set \
             link_loss = 0.0 and online_fraction = 1.0, or run the model only"
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
    if sc.phone_fraction > 0.0 || sc.calls_per_user_per_hour > 0.0 {
        bail!(
            "--real does not reproduce phones woken by push or calls yet; run those in the \
             model only"
        );
    }
    let users = (sc.nodes * sc.users_per_node) as f64;
    let expected_files = users * sc.files_per_user_per_hour * sc.duration_s / 3600.0;
    if expected_files > MAX_REAL_FILES {
        bail!(
            "--real sends at most about {MAX_REAL_FILES} files: lower files_per_user_per_hour \
             (this scenario begins about {expected_files:.0})"
        );
    }
    if sc.files_per_user_per_hour > 0.0 && sc.file_median_bytes > MAX_REAL_FILE_MEDIAN {
        bail!(
            "--real sends files of at most {} MiB median: lower file_median_bytes",
            MAX_REAL_FILE_MEDIAN / 1024.0 / 1024.0
        );
    }
    Ok(())
}

enum Fault {
    Crash(usize),
    Restart(usize),
    Cut(usize),
    Heal(usize),
}

/// The scenario's faults in time order, in seconds from the start of sending.
fn fault_plan(sc: &Scenario) -> Vec<(f64, Fault)> {
    let mut plan = Vec::new();
    for (i, c) in sc.crashes.iter().enumerate() {
        plan.push((c.at_s, Fault::Crash(i)));
        plan.push((c.at_s + c.down_s, Fault::Restart(i)));
    }
    for (i, p) in sc.partitions.iter().enumerate() {
        plan.push((p.start_s, Fault::Cut(i)));
        plan.push((p.end_s, Fault::Heal(i)));
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

/// One message a node took: its index in the model's trace, when it was sent, and its
/// send-to-device latency once delivered.
struct Sent {
    index: usize,
    at: Instant,
    latency_ms: Option<f64>,
}

/// What devices share: the messages nodes took, which home nodes are down, and how many
/// messages could not be sent.
struct Tally {
    sent: Mutex<HashMap<EnvelopeId, Sent>>,
    down: Vec<AtomicBool>,
    not_sent: AtomicU64,
}

/// A connection to `addr`, opened again if it was lost; None while the node does not answer.
async fn connected<'a>(
    conn: &'a mut Option<Connection>,
    addr: &Multiaddr,
) -> Option<&'a mut Connection> {
    if conn.is_none() {
        *conn = Connection::open(addr).await.ok();
    }
    conn.as_mut()
}

/// One device's receiving side: a long-poll fetch, acknowledged, reconnecting across crashes and
/// registering again after a disk loss.
async fn receive(
    key: Arc<IdentityKey>,
    addr: Multiaddr,
    tally: Arc<Tally>,
    files: Arc<files::Files>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<Connection> = None;
    let mut fetches = tokio::task::JoinSet::new();
    loop {
        if *stop.borrow() {
            // Each fetch ends on the same signal.
            while fetches.join_next().await.is_some() {}
            return;
        }
        let Some(c) = connected(&mut conn, &addr).await else {
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_EVERY) => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let op = ClientOp::Fetch {
            limit: 256,
            wait_ms: 1_000,
        };
        let answer = tokio::select! {
            a = c.call(&key, op) => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let envs = match answer {
            Ok(ClientResponse::Envelopes(envs)) => envs,
            Err(ClientLibError::Refused(ClientError::NotRegistered)) => {
                let _ = c.call(&key, ClientOp::Register).await;
                continue;
            }
            Ok(_) => continue,
            Err(_) => {
                conn = None;
                continue;
            }
        };
        if envs.is_empty() {
            continue;
        }
        let now = Instant::now();
        let ids: Vec<EnvelopeId> = envs.iter().map(|e| e.id).collect();
        for id in &ids {
            if let Some(p) = files.take_announcement(id) {
                let f = files::fetch(files.clone(), p, key.clone(), addr.clone(), stop.clone());
                fetches.spawn(f);
            }
        }
        {
            let mut sent = tally.sent.lock().expect("sent");
            for id in &ids {
                if let Some(m) = sent.get_mut(id)
                    && m.latency_ms.is_none()
                {
                    m.latency_ms = Some((now - m.at).as_secs_f64() * 1000.0);
                }
            }
        }
        if c.call(&key, ClientOp::Ack(ids)).await.is_err() {
            conn = None;
        }
    }
}

/// Hands one envelope to the home node, reconnecting and registering again as needed; false if
/// the node did not take it within `SEND_GIVE_UP`.
async fn send_one(
    conn: &mut Option<Connection>,
    addr: &Multiaddr,
    key: &IdentityKey,
    out: Outgoing,
) -> bool {
    let give_up = Instant::now() + SEND_GIVE_UP;
    while Instant::now() < give_up {
        if let Some(c) = connected(conn, addr).await {
            match c.call(key, ClientOp::Send(vec![out.clone()])).await {
                Ok(ClientResponse::Sent(_)) => return true,
                Err(ClientLibError::Refused(ClientError::NotRegistered)) => {
                    let _ = c.call(key, ClientOp::Register).await;
                    continue;
                }
                Ok(_) => {}
                Err(_) => *conn = None,
            }
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
    false
}

/// Runs the scenario on the model, then on the real stack, and compares them; writes both
/// sides' results to `out`. None if Ctrl-C came while the model ran (its partial results are
/// written; the real stack never started).
pub async fn run(sc: Scenario, seed: u64, out: &Path) -> Result<Option<Comparison>> {
    check(&sc)?;
    // From here Ctrl-C stops the run in order instead of ending the process. The handler is
    // registered now, not when a task is first polled, so a signal during the model's run is
    // caught too.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (interrupt_tx, interrupt) = watch::channel(false);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            if sigint.recv().await.is_some() {
                eprintln!(
                    "\ninterrupted: stopping devices and nodes, then writing what the run reached"
                );
                interrupted.store(true, Ordering::SeqCst);
                let _ = interrupt_tx.send(true);
                // The sender stays alive, so receivers never see it closed.
                std::future::pending::<()>().await;
            }
        });
    }
    // The model runs first: its trace is the workload the real devices replay.
    let model_run = hestia_simulations::Sim::new(sc.clone(), seed)
        .traced()
        .run(|_, _| !interrupted.load(Ordering::SeqCst));
    if model_run.summary.interrupted {
        hestia_simulations::write_results(out, &model_run)?;
        return Ok(None);
    }
    remove_stale_dirs();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{TMP_PREFIX}{}-", std::process::id()))
        .tempdir()?;
    let tmp_keep = std::env::var_os("HESTIA_REAL_KEEP").is_some();
    let namespaces = if sc.partitions.is_empty() {
        None
    } else {
        Some(Namespaces::create(sc.nodes)?)
    };
    let mut nodes = Vec::new();
    for i in 0..sc.nodes {
        let (listen, namespace) = match &namespaces {
            Some(ns) => (
                format!("/ip4/{}/tcp/{NAMESPACE_PORT}", ns.ip(i)),
                Some(ns.name(i)),
            ),
            None => (
                format!("/ip4/127.0.0.1/tcp/{}", free_loopback_port()?),
                None,
            ),
        };
        nodes.push(NodeProc {
            dir: tmp.path().join(format!("node{i}")),
            listen: listen.parse()?,
            namespace,
            addr: None,
            child: None,
        });
    }
    let mut fleet = Fleet {
        exe: std::env::current_exe().context("finding the hestia binary")?,
        nodes,
        namespaces,
    };
    for i in 0..sc.nodes {
        // Each node knows the ones started before it; Kademlia and presence introduce the rest.
        let bootstrap = fleet.others(i);
        fleet.spawn(i, &bootstrap).await?;
    }
    let addrs: Vec<Multiaddr> = fleet
        .nodes
        .iter()
        .map(|n| n.addr.clone().expect("started"))
        .collect();
    let peers: Vec<String> = addrs
        .iter()
        .map(|a| peer_of(a).map(|p| p.to_string()).context("node address"))
        .collect::<Result<_>>()?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Users are numbered node by node, as in the model.
    let homes: Arc<Vec<usize>> = Arc::new(
        sc.node_sizes()
            .iter()
            .enumerate()
            .flat_map(|(n, size)| std::iter::repeat_n(n, *size))
            .collect(),
    );
    let users = homes.len();
    let keys: Vec<Arc<IdentityKey>> = (0..users)
        .map(|_| Arc::new(IdentityKey::generate(&mut rng)))
        .collect();
    let tally = Arc::new(Tally {
        sent: Mutex::default(),
        down: (0..sc.nodes).map(|_| AtomicBool::new(false)).collect(),
        not_sent: AtomicU64::new(0),
    });
    let file_plan = Arc::new(files::Files::new(model_run.files.clone()));
    // Devices stop before nodes, so no request is cut off by a node shutting down.
    let (stop_devices, devices_stopped) = watch::channel(false);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (u, key) in keys.iter().enumerate() {
        let addr = &addrs[homes[u]];
        let mut c = Connection::open(addr).await?;
        c.call(key, ClientOp::Register)
            .await
            .context("registering")?;
        senders.push(Connection::open(addr).await?);
        receivers.push(tokio::spawn(receive(
            key.clone(),
            addr.clone(),
            tally.clone(),
            file_plan.clone(),
            devices_stopped.clone(),
        )));
    }

    let start = Instant::now();
    // Faults run on their own task, on the scenario's schedule; it hands the fleet back.
    let plan = fault_plan(&sc);
    let faults = {
        let (sc, tally) = (sc.clone(), tally.clone());
        let mut stop = interrupt.clone();
        tokio::spawn(async move {
            for (at, fault) in plan {
                tokio::select! {
                    _ = tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()) => {}
                    Ok(_) = stop.wait_for(|s| *s) => break,
                }
                match fault {
                    Fault::Crash(c) => {
                        let n = sc.crashes[c].node;
                        tally.down[n].store(true, Ordering::SeqCst);
                        fleet.kill(n).await?;
                        if sc.crashes[c].disk_loss {
                            fleet.lose_disk(n).await?;
                        }
                    }
                    Fault::Restart(c) => {
                        let n = sc.crashes[c].node;
                        let others = fleet.others(n);
                        fleet.spawn(n, &others).await?;
                        tally.down[n].store(false, Ordering::SeqCst);
                    }
                    Fault::Cut(p) | Fault::Heal(p) => {
                        let on = matches!(fault, Fault::Cut(_));
                        let ns = fleet.namespaces.as_ref().expect("made for partitions");
                        ns.cut(sc.partitions[p].split, on).await?;
                    }
                }
            }
            Ok::<Fleet, anyhow::Error>(fleet)
        })
    };

    // Each user sends exactly what the model's users sent, when they sent it, so the two
    // sides differ only in how the messages travel.
    let mut schedules: Vec<Vec<usize>> = vec![Vec::new(); users];
    for (i, m) in model_run.messages.iter().enumerate() {
        schedules[m.from_user].push(i);
    }
    let plan = Arc::new(model_run.messages.clone());
    let progress_line = tokio::spawn(progress(
        start,
        sc.duration_s,
        tally.clone(),
        file_plan.clone(),
    ));
    let mut send_tasks = Vec::new();
    for ((u, conn), schedule) in senders.into_iter().enumerate().zip(schedules) {
        let mut stop = interrupt.clone();
        let key = keys[u].clone();
        let all_keys = keys.clone();
        let peers = peers.clone();
        let homes = homes.clone();
        let addr = addrs[homes[u]].clone();
        let tally = tally.clone();
        let plan = plan.clone();
        let mut urng = rand::rngs::StdRng::seed_from_u64(rng.next_u64());
        send_tasks.push(tokio::spawn(async move {
            let mut conn = Some(conn);
            for i in schedule {
                let m = &plan[i];
                let at = start + Duration::from_millis(m.sent_ms);
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    Ok(_) = stop.wait_for(|s| *s) => break,
                }
                if tally.down[homes[u]].load(Ordering::SeqCst) {
                    tally.not_sent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let r = m.to_user;
                // As in the model, the body is opaque to everything measured here.
                let envelope = Envelope::seal_body(
                    &mut urng,
                    &all_keys[r].user_id(),
                    b"",
                    now_millis(),
                    hestia_protocol::envelope::DEFAULT_TTL_MS,
                )?;
                let id = envelope.id;
                // Recorded before sending: the recipient may fetch it before the answer comes.
                let record = Sent {
                    index: i,
                    at: Instant::now(),
                    latency_ms: None,
                };
                tally.sent.lock().expect("sent").insert(id, record);
                let to_node = peers[homes[r]].clone();
                let out = Outgoing { to_node, envelope };
                if !send_one(&mut conn, &addr, &key, out).await {
                    tally.sent.lock().expect("sent").remove(&id);
                    tally.not_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    // Each file the model's users began, at the same time, from the same user to the same
    // recipient, with the same size. A file's task ends when it is announced, refused, or the
    // devices stop.
    let mut file_tasks = Vec::new();
    for f in 0..file_plan.plan.len() {
        let planned = file_plan.plan[f].clone();
        let (mut stop, files, tally) = (devices_stopped.clone(), file_plan.clone(), tally.clone());
        let (keys, peers, homes, addrs) =
            (keys.clone(), peers.clone(), homes.clone(), addrs.clone());
        let mut frng = rand::rngs::StdRng::seed_from_u64(rng.next_u64());
        let mut interrupt = interrupt.clone();
        file_tasks.push(tokio::spawn(async move {
            let at = start + Duration::from_millis(planned.begun_ms);
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                Ok(_) = interrupt.wait_for(|s| *s) => return Ok(()),
            }
            let (u, r) = (planned.from_user, planned.to_user);
            let route = files::Route {
                key: &keys[u],
                home: &addrs[homes[u]],
                home_node: homes[u],
                holder_peer: &peers[homes[u]],
                recipient: &keys[r],
                recipient_peer: &peers[homes[r]],
            };
            files::send(&files, f, route, &tally, &mut frng, &mut stop).await
        }));
    }
    for t in send_tasks {
        t.await??;
    }
    let was_interrupted = || interrupted.load(Ordering::SeqCst);
    let real_s = if was_interrupted() {
        start.elapsed().as_secs_f64().min(sc.duration_s)
    } else {
        sc.duration_s
    };
    let mut fleet = faults.await??;
    // The last message may leave before the sending span ends, and files may still be due in
    // it: the drain starts when the span does.
    let sending_ends = start + Duration::from_secs_f64(sc.duration_s);
    let mut stop = interrupt.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(sending_ends.into()) => {}
        Ok(_) = stop.wait_for(|s| *s) => {}
    }
    // Drain: until every message and file arrived or drain_s passes.
    let deadline = Instant::now() + Duration::from_secs_f64(sc.drain_s);
    let undelivered = || {
        let sent = tally.sent.lock().expect("sent");
        sent.values().any(|m| m.latency_ms.is_none())
    };
    while (undelivered() || !file_plan.all_fetched())
        && Instant::now() < deadline
        && !was_interrupted()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress_line.abort();
    eprintln!();
    let _ = stop_devices.send(true);
    for r in receivers {
        r.await?;
    }
    for t in file_tasks {
        t.await??;
    }
    for i in 0..fleet.nodes.len() {
        fleet.kill(i).await?;
    }
    drop(fleet); // removes the namespaces
    if tmp_keep {
        eprintln!("node directories and logs kept in {}", tmp.keep().display());
    }

    // Each message the nodes took, by its index in the model's trace: Some(latency if delivered).
    let mut real_latency: Vec<Option<Option<f64>>> = vec![None; model_run.messages.len()];
    for m in tally.sent.lock().expect("sent").values() {
        real_latency[m.index] = Some(m.latency_ms);
    }
    let sent = real_latency.iter().flatten().count() as u64;
    let mut lat: Vec<f64> = real_latency.iter().flatten().flatten().copied().collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let real = Side {
        messages_sent: sent,
        not_sent_home_node_down: tally.not_sent.load(Ordering::Relaxed),
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
    let o = model_run;
    let m = &o.summary;
    let model = Side {
        messages_sent: m.messages_sent,
        not_sent_home_node_down: m.not_sent_home_node_down,
        delivered_to_device: m.delivered_to_device,
        delivery_ratio: m.delivery_ratio,
        p50_ms: m.latency_send_to_device.p50_ms,
        p90_ms: m.latency_send_to_device.p90_ms,
        p99_ms: m.latency_send_to_device.p99_ms,
    };
    let (mut both, mut matching) = (0u64, 0u64);
    for (m, real) in o.messages.iter().zip(&real_latency) {
        if let Some(real) = real {
            both += 1;
            matching += match (real, m.latency_ms) {
                (Some(r), Some(l)) => u64::from((r - l as f64).abs() <= LATENCY_TOLERANCE_MS),
                (None, None) => 1,
                _ => 0,
            };
        }
    }
    let gap = cdf_gap(&lat, &o.device_latencies, LATENCY_TOLERANCE_MS);
    let interrupted = was_interrupted();
    let agree = !interrupted
        && (real.delivery_ratio - model.delivery_ratio).abs() <= RATIO_TOLERANCE
        && gap <= CDF_TOLERANCE;
    let file_cmp = (!o.files.is_empty()).then(|| {
        let fates = file_plan.fates.lock().expect("fates");
        let mut real_after: Vec<f64> = fates.iter().filter_map(|f| f.fetched_after_ms).collect();
        real_after.sort_by(|a, b| a.total_cmp(b));
        let begun = fates.iter().filter(|f| f.begun).count() as u64;
        let mut model_after: Vec<f64> = o
            .files
            .iter()
            .filter_map(|f| f.fetched_after_ms.map(|t| t as f64))
            .collect();
        model_after.sort_by(|a, b| a.total_cmp(b));
        let real = file_side(begun, &real_after);
        let model = file_side(o.files.len() as u64, &model_after);
        let gap = cdf_gap(&real_after, &model_after, FILE_LATENCY_TOLERANCE_MS);
        FileComparison {
            agree: !interrupted
                && (real.fetched_ratio - model.fetched_ratio).abs() <= RATIO_TOLERANCE
                && gap <= CDF_TOLERANCE,
            real,
            model,
            cdf_gap: gap,
            latency_tolerance_ms: FILE_LATENCY_TOLERANCE_MS,
        }
    });
    let agree = agree && file_cmp.as_ref().is_none_or(|f| f.agree);
    let c = Comparison {
        scenario: sc.name.clone(),
        seed,
        network: if sc.partitions.is_empty() {
            "loopback"
        } else {
            "namespaces"
        },
        crashes: sc.crashes.len(),
        partitions: sc.partitions.len(),
        cdf_gap: gap,
        paired_within_slack: if both == 0 {
            1.0
        } else {
            matching as f64 / both as f64
        },
        real,
        model,
        ratio_tolerance: RATIO_TOLERANCE,
        latency_tolerance_ms: LATENCY_TOLERANCE_MS,
        cdf_tolerance: CDF_TOLERANCE,
        agree,
        interrupted,
        real_s,
        files: file_cmp,
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("real.json"),
        serde_json::to_string_pretty(&c)? + "\n",
    )?;
    let mut csv = String::from(
        "sent_ms,from_user,to_user,from_node,to_node,real_latency_ms,model_latency_ms\n",
    );
    let fmt = |l: Option<f64>| l.map(|l| format!("{l:.1}")).unwrap_or_default();
    for (m, real) in o.messages.iter().zip(&real_latency) {
        let real = match real {
            None => "not sent".to_string(),
            Some(l) => fmt(*l),
        };
        let model = fmt(m.latency_ms.map(|l| l as f64));
        let (from, to) = (homes[m.from_user], homes[m.to_user]);
        csv += &format!(
            "{},{},{},{from},{to},{real},{model}\n",
            m.sent_ms, m.from_user, m.to_user
        );
    }
    std::fs::write(out.join("real_messages.csv"), csv)?;
    if !o.files.is_empty() {
        let mut csv = String::from(
            "begun_ms,from_user,to_user,from_node,to_node,bytes,real,real_fetched_after_ms,model_fetched_after_ms\n",
        );
        let fates = file_plan.fates.lock().expect("fates");
        for (f, real) in o.files.iter().zip(fates.iter()) {
            let state = match real {
                r if !r.begun => "not begun",
                r if r.refused => "refused",
                r if r.fetched_after_ms.is_some() => "fetched",
                r if r.announced => "announced",
                _ => "uploading",
            };
            let model = f
                .fetched_after_ms
                .map(|t| t.to_string())
                .unwrap_or_default();
            csv += &format!(
                "{},{},{},{},{},{},{state},{},{model}\n",
                f.begun_ms,
                f.from_user,
                f.to_user,
                homes[f.from_user],
                homes[f.to_user],
                f.size,
                fmt(real.fetched_after_ms),
            );
        }
        std::fs::write(out.join("real_files.csv"), csv)?;
    }
    std::fs::write(
        out.join("real_vs_model_cdf.csv"),
        cdf_table(&lat, &o.device_latencies),
    )?;
    hestia_simulations::write_results(out, &o)?;
    // The model's plot, redrawn with the real stack's curve beside it.
    let title = format!(
        "send to device latency, CDF ({}; seed {seed}): real stack and model",
        sc.name
    );
    let curves = [("real stack", &lat[..]), ("model", &o.device_latencies[..])];
    std::fs::write(
        out.join("latency_cdf.svg"),
        hestia_simulations::plots::latency_cdf(&title, &curves)?,
    )?;
    Ok(Some(c))
}

/// A progress line on standard error, once a second: time, messages the nodes took and
/// delivered, files begun and fetched (if any), nodes down.
async fn progress(start: Instant, duration_s: f64, tally: Arc<Tally>, files: Arc<files::Files>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let (sent, delivered) = {
            let s = tally.sent.lock().expect("sent");
            let delivered = s.values().filter(|m| m.latency_ms.is_some()).count();
            (s.len(), delivered)
        };
        let down = tally
            .down
            .iter()
            .filter(|d| d.load(Ordering::Relaxed))
            .count();
        let file_part = if files.plan.is_empty() {
            String::new()
        } else {
            let fates = files.fates.lock().expect("fates");
            let begun = fates.iter().filter(|f| f.begun).count();
            let fetched = fates
                .iter()
                .filter(|f| f.fetched_after_ms.is_some())
                .count();
            format!("  files {fetched}/{begun} fetched")
        };
        let done = ((t / duration_s.max(1.0)) * 30.0).clamp(0.0, 30.0) as usize;
        let phase = if t < duration_s {
            format!("{t:>5.0}/{duration_s:.0} s sending")
        } else {
            "draining".to_string()
        };
        eprint!(
            "\r[{}{}] real stack: {phase}  taken {sent}  delivered {delivered}{file_part}  nodes down {down} ",
            "#".repeat(done),
            ".".repeat(30 - done)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_planned_in_time_order() {
        let sc: Scenario = toml::from_str(
            "crashes = [{ node = 1, at_s = 5.0, down_s = 10.0 }]\n\
             partitions = [{ start_s = 7.0, end_s = 9.0, split = 1 }]\n",
        )
        .unwrap();
        let times: Vec<f64> = fault_plan(&sc).iter().map(|f| f.0).collect();
        assert_eq!(times, vec![5.0, 7.0, 9.0, 15.0]);
    }
}
