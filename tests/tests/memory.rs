//! A node's memory does not grow with the mail it holds: the relay core keeps ids, expiries and
//! sizes; bodies stay on disk until a fetch reads them.

use hestia_tests::{Proc, fill_mailboxes, hestia_bin, memory_kib, spawn_exe};

/// Starts a node on a data directory already holding `users` × `per_user` envelopes of 1 KiB;
/// returns it with its resident and peak resident memory (KiB) once it has loaded them and
/// listens.
fn node_holding(dir: &std::path::Path, users: usize, per_user: usize) -> (Proc, (u64, u64)) {
    fill_mailboxes(dir, users, per_user, 1024);
    let args = [
        "node",
        "run",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ];
    let p = spawn_exe(hestia_bin(), dir, &args);
    let (rss, peak) = memory_kib(p.pid());
    eprintln!("{users}x{per_user}: rss {rss} KiB, peak {peak} KiB");
    (p, (rss, peak))
}

#[test]
fn node_memory_stays_flat_as_stored_mail_grows() {
    let tmp = tempfile::tempdir().unwrap();
    // 5,000 and 45,000 envelopes: 40,000 KiB more bodies on disk.
    let (small, (small_rss, small_peak)) = node_holding(&tmp.path().join("small"), 50, 100);
    let (large, (large_rss, large_peak)) = node_holding(&tmp.path().join("large"), 450, 100);
    let added_bodies_kib = 40_000;
    // Metadata costs about a hundred bytes an envelope; bodies would be 1 KiB each and more.
    // The peak also holds what RocksDB replays from its log at start (bounded by its memtable
    // budget, 16 MiB).
    let (rss, peak) = (
        large_rss.saturating_sub(small_rss),
        large_peak.saturating_sub(small_peak),
    );
    assert!(
        rss < added_bodies_kib / 4 && peak < added_bodies_kib / 2,
        "memory grew by {rss} KiB resident, {peak} KiB peak ({small_rss}/{small_peak} -> \
         {large_rss}/{large_peak}) for {added_bodies_kib} KiB of stored bodies"
    );
    drop((small, large));
}
