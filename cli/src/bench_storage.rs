//! `hestia bench --only storage`: what a node costs while it holds mail for offline users.
//! A node database is filled with `--stored` envelopes of 1 KiB for `--users` users (through
//! the store, in large synced batches: the fill rate is the raw baseline), then a real `hestia
//! node run` process starts on it. Reported: how long until it listens (a restart: it reads
//! every mailbox entry), its resident and peak resident memory, and the same for an empty node
//! in the same run, so the cost of the stored mail is the difference.

use anyhow::Result;
use hestia_tests::{fill_mailboxes, memory_kib, spawn_exe};
use std::path::Path;
use std::time::Instant;

/// Bytes of each stored envelope's body.
const BODY: usize = 1024;

struct Start {
    secs: f64,
    rss_kib: u64,
    peak_kib: u64,
}

fn start_node(exe: &Path, dir: &Path) -> Start {
    let args = [
        "node",
        "run",
        "--data-dir",
        dir.to_str().expect("temporary paths are UTF-8"),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ];
    let t = Instant::now();
    let p = spawn_exe(exe, dir, &args);
    let secs = t.elapsed().as_secs_f64();
    let (rss_kib, peak_kib) = memory_kib(p.pid());
    p.kill9();
    Start {
        secs,
        rss_kib,
        peak_kib,
    }
}

pub fn run(stored: usize, users: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let tmp = tempfile::tempdir()?;
    let empty = tmp.path().join("empty");
    fill_mailboxes(&empty, 1, 0, BODY);
    let base = start_node(&exe, &empty);
    let full = tmp.path().join("full");
    eprintln!("storage: writing {stored} envelopes of {BODY} B for {users} users…");
    let per_user = stored.div_ceil(users.max(1));
    let fill_rate = fill_mailboxes(&full, users, per_user, BODY);
    let held = per_user * users;
    eprintln!("storage: restarting a node on them…");
    // Twice: the first start after the fill also compacts what the fill left in the log.
    let first = start_node(&exe, &full);
    let warm = start_node(&exe, &full);
    let mib = |k: u64| k as f64 / 1024.0;
    println!("| measurement | figure | ratio |");
    println!("| --- | --- | --- |");
    println!(
        "| raw fill through the store, synced batches of 4096 | {fill_rate:.0} envelopes/s | baseline |"
    );
    println!(
        "| empty node: start to listening | {:.2} s, resident {:.1} MiB, peak {:.1} MiB | baseline |",
        base.secs,
        mib(base.rss_kib),
        mib(base.peak_kib)
    );
    for (name, s) in [("first restart", &first), ("second restart", &warm)] {
        println!(
            "| node holding {held} envelopes ({:.0} MiB of bodies), {name} | {:.2} s, resident {:.1} MiB, peak {:.1} MiB | {:.0} B resident per stored envelope beyond the empty node; restart {:.1}× the empty node's |",
            (held * BODY) as f64 / 1048576.0,
            s.secs,
            mib(s.rss_kib),
            mib(s.peak_kib),
            (s.rss_kib.saturating_sub(base.rss_kib) * 1024) as f64 / held.max(1) as f64,
            s.secs / base.secs.max(1e-9)
        );
    }
    Ok(())
}
