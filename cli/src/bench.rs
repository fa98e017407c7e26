//! `hestia bench`: relay throughput and send-to-device latency on loopback, beside two raw
//! baselines measured in the same run on the same machine:
//!
//! - a bare libp2p request-response echo (TCP + Noise + Yamux) of the same payload size;
//! - raw RocksDB synced batch writes of the same value size.
//!
//! The relay figures use two real nodes (libp2p over loopback TCP, RocksDB in a temporary
//! directory, every acknowledgement synced) in this process, and clients speaking
//! `/hestia/client/1` to them. Envelopes are sealed before the clock starts: this measures the
//! relay, not the sender's crypto. Output is a Markdown table for docs/benchmarks.md.

use crate::demo::start_local_node;
use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use hestia_node::client::Connection;
use hestia_node::driver::{build_swarm, now_millis};
use hestia_node::frame::FrameCodec;
use hestia_protocol::envelope::{DEFAULT_TTL_MS, Envelope, EnvelopeId};
use hestia_protocol::identity::IdentityKey;
use hestia_protocol::wire::{
    ClientOp, ClientResponse, DeliveryState, MAX_BATCH_ENVELOPES, Outgoing, SendResult,
};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, identity};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Relay throughput and latency on loopback.
    Relay,
    /// Session crypto: ratchet encrypt/decrypt and set-up beside raw AEAD and X25519.
    Sessions,
    /// A node holding mail for offline users: restart time and memory (`--stored`, `--users`).
    Storage,
    /// Connected devices each holding a long poll: the node's memory (`--devices`).
    Devices,
    /// One device to another, end to end, on one node and across two, beside Prosody
    /// (`--messages`).
    Chat,
    /// One file from a device to another across two nodes, every party its own process,
    /// beside raw sealing and synced chunk writes (`--file-mib`).
    Files,
    /// Calls across two nodes relayed by both, every party its own process: set-up times, CPU,
    /// frames lost, beside the message round trip (`--calls`).
    Calls,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Run only one part (both by default).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Envelopes relayed in the throughput run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(256..=200_000))]
    envelopes: u64,
    /// Latency samples per load level.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    samples: u64,
    /// Envelopes held in the storage run (1 KiB each).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    stored: u64,
    /// Devices connected at once in the devices run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=15_000))]
    devices: u64,
    /// Offline users they are held for in the storage run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    users: u64,
    /// Messages per run in the chat benchmark (paced runs send at least two seconds' worth).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    messages: u64,
    /// Calls in the calls benchmark.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    calls: u64,
    /// Size of the file in the files benchmark, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=8192))]
    file_mib: u64,
    /// Envelopes per client send request in the throughput run.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=256))]
    batch: u64,
}

/// Recipients on the receiving node in the throughput run: each mailbox holds at most
/// `relay::MAX_MAILBOX_ENVELOPES`, so the load is spread.
const RECIPIENTS: usize = 32;
/// Size of the raw baselines' payloads: the sealed body of a short message (256 B bucket).
const PAYLOAD: usize = 256;
/// Envelopes per request from each background sender in the loaded latency run.
const LOAD_BATCH: usize = 64;
/// Seconds of background load sealed in advance (the measurement takes about two).
const LOAD_SECONDS: f64 = 4.0;

pub(crate) struct Cluster {
    _tmp: tempfile::TempDir,
    pub(crate) addrs: Vec<Multiaddr>,
    peers: Vec<String>,
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
}

/// Two real nodes in this process that know each other, without the per-user send limit.
pub(crate) async fn cluster() -> Result<Cluster> {
    let tmp = tempfile::tempdir()?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut addrs = Vec::new();
    let mut peers = Vec::new();
    // Node 1 starts first; node 0 is given its address as its bootstrap peer, so the two find
    // each other without a third node.
    for i in [1, 0] {
        let dir = tmp.path().join(format!("node{i}"));
        // The benchmark measures the relay, not the per-user abuse limit: its few senders push
        // far more than any person would.
        let node = start_local_node(
            &dir,
            addrs.clone(),
            hestia_node::relay::Limits::UNLIMITED,
            rx.clone(),
        )
        .await?;
        peers.push(node.peer);
        addrs.push(node.addr);
    }
    addrs.reverse();
    peers.reverse();
    Ok(Cluster {
        _tmp: tmp,
        addrs,
        peers,
        stop,
    })
}

async fn user(addr: &Multiaddr) -> Result<(IdentityKey, Connection)> {
    let key = IdentityKey::generate(&mut rand::rng());
    let mut conn = Connection::open(addr).await?;
    conn.call(&key, ClientOp::Register).await?;
    Ok((key, conn))
}

/// Envelopes of the smallest bucket for `to`. The relay never looks inside a body, so the
/// relay benchmarks seal a short payload directly (the session layer has its own benchmark).
fn seal(to: &IdentityKey, n: usize) -> Result<Vec<Envelope>> {
    let mut rng = rand::rng();
    (0..n)
        .map(|i| {
            Envelope::seal_body(
                &mut rng,
                &to.user_id(),
                format!("bench message {i}").as_bytes(),
                now_millis(),
                DEFAULT_TTL_MS,
            )
            .context("sealing")
        })
        .collect()
}

/// Concurrent senders in the throughput run: many users share a node, and one sequential
/// client connection would measure the client, not the relay.
const SENDERS: usize = 4;

/// CPU time this process has used so far (all threads, user and system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// What one throughput run measured.
struct Throughput {
    per_sec: f64,
    /// CPU time of the whole process (both nodes, their RocksDB threads, the senders) per
    /// envelope, in microseconds: steadier than the rate on a shared machine.
    cpu_us: f64,
}

/// `SENDERS` users on node 0 send envelopes in batches to users on node 1; the clock stops when
/// node 0 reports every sender's last batch delivered to node 1.
async fn throughput(c: &Cluster, total: usize, batch: usize) -> Result<Throughput> {
    let mut recipients = Vec::new();
    for _ in 0..RECIPIENTS {
        recipients.push(user(&c.addrs[1]).await?.0);
    }
    let per_sender = total.div_ceil(SENDERS);
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (key, conn) = user(&c.addrs[0]).await?;
        let mut envs = Vec::new();
        for (i, r) in recipients.iter().enumerate() {
            let n = per_sender / RECIPIENTS + usize::from(i < per_sender % RECIPIENTS);
            envs.extend(seal(r, n)?);
        }
        // Interleave recipients so every batch spreads across mailboxes.
        envs.sort_by_key(|e| e.id);
        // The requests are built before the clock starts: the senders stand for many devices.
        let ops: Vec<ClientOp> = envs
            .chunks(batch)
            .map(|b| send_op(&c.peers[1], b))
            .collect();
        senders.push((key, conn, envs, ops));
    }
    let sent: usize = senders.iter().map(|s| s.2.len()).sum();
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (key, mut conn, envs, ops) in senders {
        tasks.push(tokio::spawn(async move {
            for op in ops {
                match conn.call(&key, op).await? {
                    ClientResponse::Sent(r) if r.iter().all(|x| *x == SendResult::Queued) => {}
                    other => bail!("send refused: {other:?}"),
                }
            }
            // The outbox drains roughly in order: wait for this sender's last batch.
            let tail: Vec<EnvelopeId> = envs[envs.len().saturating_sub(MAX_BATCH_ENVELOPES)..]
                .iter()
                .map(|e| e.id)
                .collect();
            loop {
                let states = match conn.call(&key, ClientOp::Status(tail.clone())).await? {
                    ClientResponse::Status(s) => s,
                    other => bail!("status: {other:?}"),
                };
                if states
                    .iter()
                    .all(|s| matches!(s, DeliveryState::DeliveredToNode { .. }))
                {
                    return Ok(());
                }
                if start.elapsed() > Duration::from_secs(120) {
                    bail!("relay did not drain in 120 s");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Throughput {
        per_sec: sent as f64 / secs,
        cpu_us: (cpu_seconds() - cpu_start) * 1e6 / sent as f64,
    })
}

fn send_op(to: &str, envs: &[Envelope]) -> ClientOp {
    ClientOp::Send(
        envs.iter()
            .map(|e| Outgoing {
                to_node: to.to_string(),
                envelope: e.clone(),
            })
            .collect(),
    )
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Send-to-device latency: Bob's device holds a long-poll fetch open on node 1; Alice sends one
/// envelope at a time through node 0. Optionally a background sender keeps `load` envelopes/s
/// flowing to other users on node 1. Returns (p50, p99) in milliseconds and the achieved load.
async fn latency(c: &Cluster, samples: usize, load: f64) -> Result<(f64, f64, f64)> {
    let (alice, mut ac) = user(&c.addrs[0]).await?;
    let (bob, mut bc) = user(&c.addrs[1]).await?;
    let envs = seal(&bob, samples)?;
    let sent_at: Arc<Mutex<HashMap<EnvelopeId, Instant>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<f64>(samples);
    let recv_map = sent_at.clone();
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        while got < samples {
            let envs = match bc
                .call(
                    &bob,
                    ClientOp::Fetch {
                        limit: 256,
                        wait_ms: 10_000,
                    },
                )
                .await?
            {
                ClientResponse::Envelopes(e) => e,
                other => bail!("fetch: {other:?}"),
            };
            let now = Instant::now();
            let ids: Vec<EnvelopeId> = envs.iter().map(|e| e.id).collect();
            for id in &ids {
                let t0 = recv_map.lock().expect("latency map").remove(id);
                if let Some(t0) = t0 {
                    got += 1;
                    let _ = done_tx.send((now - t0).as_secs_f64() * 1000.0).await;
                }
            }
            if !ids.is_empty() {
                bc.call(&bob, ClientOp::Ack(ids)).await?;
            }
        }
        Ok::<(), anyhow::Error>(())
    });

    let stop_load = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut background = Vec::new();
    if load > 0.0 {
        let mut sinks = Vec::new();
        for _ in 0..RECIPIENTS {
            sinks.push(user(&c.addrs[1]).await?.0);
        }
        // Each of SENDERS users sends batches of LOAD_BATCH at load / SENDERS envelopes/s, with
        // enough envelopes sealed for the measurement (bounded).
        let per_sender = ((load * LOAD_SECONDS) as usize / SENDERS).clamp(1_000, 50_000);
        for _ in 0..SENDERS {
            let (key, mut conn) = user(&c.addrs[0]).await?;
            let mut envs = Vec::new();
            for s in &sinks {
                envs.extend(seal(s, per_sender.div_ceil(RECIPIENTS))?);
            }
            let to = c.peers[1].clone();
            let stop = stop_load.clone();
            let interval = Duration::from_secs_f64(LOAD_BATCH as f64 * SENDERS as f64 / load);
            background.push(tokio::spawn(async move {
                let start = Instant::now();
                let mut sent = 0usize;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for chunk in envs.chunks(LOAD_BATCH) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    tick.tick().await;
                    conn.call(&key, send_op(&to, chunk)).await?;
                    sent += chunk.len();
                }
                Ok::<(usize, f64), anyhow::Error>((sent, start.elapsed().as_secs_f64()))
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // let the load settle
    }

    let mut lat = Vec::with_capacity(samples);
    for e in envs {
        sent_at
            .lock()
            .expect("latency map")
            .insert(e.id, Instant::now());
        let items = vec![Outgoing {
            to_node: c.peers[1].clone(),
            envelope: e,
        }];
        ac.call(&alice, ClientOp::Send(items)).await?;
        let ms = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
            .await
            .context("an envelope took over 30 s to reach the device")?
            .context("receiver ended")?;
        lat.push(ms);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    receiver.await??;
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut achieved = 0.0;
    for h in background {
        let (sent, secs) = h.await??;
        achieved += sent as f64 / secs;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99), achieved))
}

#[derive(NetworkBehaviour)]
struct Echo {
    rr: request_response::Behaviour<FrameCodec<Vec<u8>, Vec<u8>>>,
}

fn echo_behaviour() -> Echo {
    Echo {
        rr: request_response::Behaviour::new(
            [(
                StreamProtocol::new("/hestia/bench-echo/1"),
                ProtocolSupport::Full,
            )],
            request_response::Config::default().with_max_concurrent_streams(256),
        ),
    }
}

/// Bare libp2p request-response echo over one connection: requests per second with
/// `in_flight` outstanding at a time.
async fn echo_baseline(requests: usize, in_flight: usize) -> Result<f64> {
    let mut server = build_swarm(identity::Keypair::generate_ed25519(), |_| {
        Ok(echo_behaviour())
    })?;
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_peer = *server.local_peer_id();
    let server_task = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(EchoEvent::Rr(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            })) = server.select_next_some().await
            {
                let _ = server.behaviour_mut().rr.send_response(channel, request);
            }
        }
    });
    let mut client = build_swarm(identity::Keypair::generate_ed25519(), |_| {
        Ok(echo_behaviour())
    })?;
    client.dial(addr)?;
    loop {
        if let SwarmEvent::ConnectionEstablished { .. } = client.select_next_some().await {
            break;
        }
    }
    let payload = vec![7u8; PAYLOAD];
    let start = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    while sent < in_flight.min(requests) {
        client
            .behaviour_mut()
            .rr
            .send_request(&server_peer, payload.clone());
        sent += 1;
    }
    while done < requests {
        match client.select_next_some().await {
            SwarmEvent::Behaviour(EchoEvent::Rr(request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            })) => {
                done += 1;
                if sent < requests {
                    client
                        .behaviour_mut()
                        .rr
                        .send_request(&server_peer, payload.clone());
                    sent += 1;
                }
            }
            SwarmEvent::Behaviour(EchoEvent::Rr(request_response::Event::OutboundFailure {
                error,
                ..
            })) => bail!("echo failed: {error}"),
            _ => {}
        }
    }
    let rate = requests as f64 / start.elapsed().as_secs_f64();
    server_task.abort();
    Ok(rate)
}

/// Raw RocksDB: values of `PAYLOAD` bytes, written in synced batches of `batch`.
fn rocksdb_baseline(writes: usize, batch: usize) -> Result<f64> {
    let tmp = tempfile::tempdir()?;
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    let db = rocksdb::DB::open(&opts, tmp.path())?;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let value = vec![7u8; PAYLOAD];
    let start = Instant::now();
    let mut i = 0u64;
    while (i as usize) < writes {
        let mut b = rocksdb::WriteBatch::default();
        for _ in 0..batch {
            b.put(i.to_be_bytes(), &value);
            i += 1;
        }
        db.write_opt(b, &wo)?;
    }
    Ok(i as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.only == Some(Only::Calls) {
        let calls = args.calls as usize;
        return tokio::task::spawn_blocking(move || crate::bench_calls::run(calls)).await?;
    }
    if args.only == Some(Only::Files) {
        let mib = args.file_mib;
        return tokio::task::spawn_blocking(move || crate::bench_files::run(mib)).await?;
    }
    if args.only == Some(Only::Chat) {
        return crate::bench_chat::run(args.messages as usize).await;
    }
    if args.only == Some(Only::Devices) {
        return crate::bench_devices::run(args.devices as usize).await;
    }
    if args.only == Some(Only::Storage) {
        let (stored, users) = (args.stored as usize, args.users as usize);
        return tokio::task::spawn_blocking(move || crate::bench_storage::run(stored, users))
            .await?;
    }
    if args.only != Some(Only::Relay) {
        eprintln!("sessions: ratchet and set-up beside raw AEAD and X25519…");
        tokio::task::spawn_blocking(crate::bench_sessions::run).await??;
        if args.only == Some(Only::Sessions) {
            return Ok(());
        }
        println!();
    }
    eprintln!("baseline: raw RocksDB synced batch writes…");
    let rocks_64 = tokio::task::spawn_blocking(|| rocksdb_baseline(64 * 2_000, 64)).await??;
    let rocks_1 = tokio::task::spawn_blocking(|| rocksdb_baseline(2_000, 1)).await??;
    eprintln!("baseline: bare libp2p request-response echo…");
    let echo_1 = echo_baseline(5_000, 1).await?;
    let echo_32 = echo_baseline(20_000, 32).await?;

    let c = cluster().await?;
    eprintln!("relay: throughput with durable acks…");
    let t = throughput(&c, args.envelopes as usize, args.batch as usize).await?;
    let tput = t.per_sec;
    eprintln!("relay: latency at light load…");
    let (l50, l99, _) = latency(&c, args.samples as usize, 0.0).await?;
    eprintln!("relay: latency at 80% of measured throughput…");
    let (h50, h99, achieved) = latency(&c, args.samples as usize, tput * 0.8).await?;
    let _ = c.stop.send(true);

    println!("| measurement | figure | ratio to baseline |");
    println!("| --- | --- | --- |");
    println!(
        "| raw RocksDB, {PAYLOAD} B values, synced batches of 64 | {rocks_64:.0} writes/s | baseline |"
    );
    println!(
        "| raw RocksDB, {PAYLOAD} B values, one synced write each | {rocks_1:.0} writes/s | baseline |"
    );
    println!(
        "| bare libp2p request-response echo, {PAYLOAD} B, 1 in flight | {echo_1:.0} req/s | baseline |"
    );
    println!(
        "| bare libp2p request-response echo, {PAYLOAD} B, 32 in flight | {echo_32:.0} req/s | baseline |"
    );
    println!(
        "| relay node to node, durable acks, {SENDERS} senders, client batches of {} | {tput:.0} envelopes/s | {:.2} of synced-batch writes; {:.2} of pipelined echo |",
        args.batch,
        tput / rocks_64,
        tput / echo_32
    );
    println!(
        "| relay node to node: CPU per envelope (both nodes, their RocksDB threads and the senders) | {:.1} µs | {:.2} cores busy of 2 |",
        t.cpu_us,
        t.cpu_us * tput / 1e6
    );
    println!(
        "| send to device, light load | p50 {l50:.2} ms, p99 {l99:.2} ms | p99 = {:.1} sequential echo round trips |",
        l99 / (1000.0 / echo_1)
    );
    println!(
        "| send to device, background load {achieved:.0} envelopes/s (target 80% = {:.0}) | p50 {h50:.2} ms, p99 {h99:.2} ms | p99 = {:.1} sequential echo round trips |",
        tput * 0.8,
        h99 / (1000.0 / echo_1)
    );
    Ok(())
}
