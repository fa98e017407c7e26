//! `hestia bench --only devices [--devices N]`: what connected devices cost a node. A real
//! `hestia node run` process; N devices in this process, each its own libp2p connection (its own
//! key, Noise and Yamux), registering an account and then holding a long-poll fetch open, as an
//! idle phone or desktop does. Reported beside an idle node measured in the same run: the node's
//! resident and peak resident memory with all N waiting, per device, and how long the N took to
//! connect and register.

use anyhow::{Context, Result, bail};
use hestia_node::client::Connection;
use hestia_protocol::identity::IdentityKey;
use hestia_protocol::wire::{ClientOp, ClientResponse, MAX_FETCH_WAIT_MS};
use hestia_tests::{memory_kib, spawn_exe};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Devices connecting at once (the node refuses more than 256 half-open connections).
const CONNECTING_AT_ONCE: usize = 64;

pub async fn run(devices: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("node");
    let dir_arg = dir
        .to_str()
        .context("temporary paths are UTF-8")?
        .to_string();
    let node = tokio::task::spawn_blocking(move || {
        let args = [
            "node",
            "run",
            "--data-dir",
            &dir_arg,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ];
        spawn_exe(&exe, &dir, &args)
    })
    .await?;
    let addr: libp2p::Multiaddr = node.addr.parse()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = memory_kib(node.pid());
    eprintln!("devices: connecting {devices} devices, each holding a long poll…");
    let start = Instant::now();
    let waiting = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    let mut tasks = Vec::new();
    for _ in 0..devices {
        let (addr, waiting, failed, gate) =
            (addr.clone(), waiting.clone(), failed.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let key = IdentityKey::generate(&mut rand::rng());
            let conn = {
                let _turn = gate.acquire().await;
                let mut conn = match Connection::open(&addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("devices: a device could not connect: {e}");
                        }
                        return;
                    }
                };
                match conn.call(&key, ClientOp::Register).await {
                    Ok(ClientResponse::Registered) => conn,
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            };
            let mut conn = conn;
            waiting.fetch_add(1, Ordering::Relaxed);
            // Hold a wait open, again and again, until the benchmark ends (it aborts us).
            loop {
                let op = ClientOp::Fetch {
                    limit: 16,
                    wait_ms: MAX_FETCH_WAIT_MS,
                };
                if let Err(e) = conn.call(&key, op).await {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("devices: a waiting device failed: {e}");
                    }
                    return;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while waiting.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < devices {
        if Instant::now() > deadline {
            bail!("devices did not all connect in time");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_s = start.elapsed().as_secs_f64();
    // Let the last fetches arrive and park.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, peak) = memory_kib(node.pid());
    let n = waiting.load(Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    node.kill9();
    let mib = |k: u64| k as f64 / 1024.0;
    println!("| measurement | figure | ratio |");
    println!("| --- | --- | --- |");
    println!(
        "| idle node, no devices | resident {:.1} MiB | baseline |",
        mib(idle_rss)
    );
    println!(
        "| {n} devices connected, registered and each holding a long poll ({} failed) | resident {:.1} MiB, peak {:.1} MiB; all connected in {connect_s:.1} s | {:.1} KiB resident per device beyond the idle node |",
        failed.load(Ordering::Relaxed),
        mib(rss),
        mib(peak),
        rss.saturating_sub(idle_rss) as f64 / n.max(1) as f64
    );
    Ok(())
}
