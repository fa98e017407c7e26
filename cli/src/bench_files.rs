//! `hestia bench --only files [--file-mib N]`: one file from Alice's device to Bob's across two
//! nodes, every party its own process (the shared harness), upload and download timed apart,
//! each process's memory sampled while it runs. Beside it, in the same run, the two raw
//! baselines the transfer is made of: XChaCha20-Poly1305 sealing of 256 KiB chunks (one core)
//! and synced writes of the same chunks to a node store (one chunk and its record per synced
//! write, as an upload writes them); and, for the comparison that chose chunk files, the same
//! writes with the chunks in a RocksDB BlobDB column family.

use anyhow::{Context, Result, bail};
use hestia_protocol::file::{BlobId, CHUNK_BYTES, FileCipher, SEALED_CHUNK_BYTES};
use hestia_store::node::{NodeDb, NodeStore, NodeWrite};
use hestia_tests::{Net, memory_kib, use_hestia_bin};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes the baselines move (enough for a steady rate, less than the file to keep them short).
const BASELINE_BYTES: u64 = 256 << 20;

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
}

/// Seals `BASELINE_BYTES` in chunks: MiB/s on one core.
fn aead_baseline() -> Result<f64> {
    let cipher = FileCipher::generate(&mut rand::rng(), BASELINE_BYTES)?;
    let chunk = vec![7u8; CHUNK_BYTES as usize];
    let n = (BASELINE_BYTES / u64::from(CHUNK_BYTES)) as u32;
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(cipher.seal(i, &chunk)?);
    }
    Ok(mib_s(BASELINE_BYTES, t.elapsed().as_secs_f64()))
}

/// A blob's record as an upload goes, chunk map and all.
fn record(chunks_held: u32) -> hestia_store::node::BlobRecord {
    let spec = hestia_protocol::wire::BlobSpec::of_file(BASELINE_BYTES, [0; 32], 0);
    let mut held = vec![0; (spec.chunks as usize).div_ceil(8)];
    for i in 0..chunks_held as usize {
        held[i / 8] |= 1 << (i % 8);
    }
    hestia_store::node::BlobRecord {
        owner: hestia_protocol::identity::UserId([1; 32]),
        held,
        spec,
        phase: hestia_protocol::wire::BlobPhase::Uploading,
        touched_at: 0,
    }
}

/// Writes `BASELINE_BYTES` of sealed chunks to a node store as an upload does: each chunk with
/// its blob's record, one synced write each. MiB/s.
fn store_baseline(dir: &Path) -> Result<f64> {
    let mut db = NodeDb::open(dir)?;
    let chunk = vec![7u8; SEALED_CHUNK_BYTES as usize];
    let n = (BASELINE_BYTES / u64::from(CHUNK_BYTES)) as u32;
    let blob = BlobId([1; 16]);
    let t = Instant::now();
    for i in 0..n {
        db.apply(&[
            NodeWrite::PutChunk(blob, i, chunk.clone()),
            NodeWrite::PutBlob(blob, record(i + 1)),
        ])?;
    }
    Ok(mib_s(BASELINE_BYTES, t.elapsed().as_secs_f64()))
}

/// The way chunks were kept before schema 6, for the comparison the choice rests on (issue 11
/// asks to choose by measurement): each chunk and its record in one synced RocksDB batch, the
/// chunk in a column family with integrated BlobDB (values of 4 KiB and more in blob files).
fn blobdb_baseline(dir: &Path) -> Result<f64> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    let mut blobs = opts.clone();
    blobs.set_enable_blob_files(true);
    blobs.set_min_blob_size(4096);
    blobs.set_blob_file_size(64 << 20);
    let cfs = [
        rocksdb::ColumnFamilyDescriptor::new("chunks", blobs),
        rocksdb::ColumnFamilyDescriptor::new("records", opts.clone()),
    ];
    let db = rocksdb::DB::open_cf_descriptors(&opts, dir, cfs)?;
    let (chunks, records) = (
        db.cf_handle("chunks").context("chunks family")?,
        db.cf_handle("records").context("records family")?,
    );
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let chunk = vec![7u8; SEALED_CHUNK_BYTES as usize];
    let n = (BASELINE_BYTES / u64::from(CHUNK_BYTES)) as u32;
    let t = Instant::now();
    for i in 0..n {
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(chunks, i.to_be_bytes(), &chunk);
        b.put_cf(
            records,
            [1u8; 16],
            hestia_protocol::codec::encode(&record(i + 1))?,
        );
        db.write_opt(b, &wo)?;
    }
    Ok(mib_s(BASELINE_BYTES, t.elapsed().as_secs_f64()))
}

/// `size` bytes that do not compress: a fast generator, written in 1 MiB pieces.
fn write_file(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Peak resident memory seen while a command ran: its own (from the kernel's high-water mark)
/// and each watched process's (sampled), in KiB.
struct Run {
    secs: f64,
    own_peak_kib: u64,
    watched_peak_kib: Vec<u64>,
    stdout: String,
}

fn run_watched(net: &Net, user: &str, args: &[&str], watch: &[u32]) -> Result<Run> {
    let mut child = Command::new(hestia_tests::hestia_bin())
        .arg("--home")
        .arg(net.home(user))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting hestia")?;
    let t = Instant::now();
    let mut own = 0;
    let mut watched = vec![0u64; watch.len()];
    let status = loop {
        own = own.max(memory_kib(child.id()).1);
        for (w, pid) in watched.iter_mut().zip(watch) {
            *w = (*w).max(memory_kib(*pid).0);
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = t.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    if !status.success() {
        bail!(
            "hestia {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Run {
        secs,
        own_peak_kib: own,
        watched_peak_kib: watched,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

pub fn run(file_mib: u64) -> Result<()> {
    use_hestia_bin(std::env::current_exe()?);
    let size = file_mib << 20;
    eprintln!("files: baselines (sealing, synced chunk writes)…");
    let tmp = tempfile::tempdir()?;
    let aead = aead_baseline()?;
    let store = store_baseline(&tmp.path().join("baseline-db"))?;
    let blobdb = blobdb_baseline(&tmp.path().join("baseline-blobdb"))?;
    eprintln!("files: two nodes, two devices; a {file_mib} MiB file…");
    let net = Net::start(2);
    net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    let src = tmp.path().join("bench.bin");
    write_file(&src, size)?;
    let pids: Vec<u32> = net
        .nodes
        .iter()
        .map(|n| n.as_ref().expect("running").pid())
        .collect();
    let idle: Vec<u64> = pids.iter().map(|p| memory_kib(*p).0).collect();
    // A device doing nothing much: its peak is the idle size of a device process.
    let idle_device = run_watched(&net, "bob", &["inbox"], &[])?.own_peak_kib;
    eprintln!("files: uploading…");
    let src_text = src.to_str().context("temporary paths are UTF-8")?;
    let up = run_watched(&net, "alice", &["send", "bob", "--file", src_text], &pids)?;
    let inbox = net.ok("bob", &["inbox"]);
    let at = inbox.find(" id ").context("no file in Bob's inbox")?;
    let id = inbox[at + 4..at + 16].to_string();
    eprintln!("files: downloading…");
    let out = tmp.path().join("received.bin");
    let down = run_watched(
        &net,
        "bob",
        &["file", "get", &id, "--out", out.to_str().context("UTF-8")?],
        &pids,
    )?;
    if std::fs::metadata(&out)?.len() != size || !down.stdout.contains("verified") {
        bail!("the download did not arrive whole: {}", down.stdout);
    }
    let slowest = aead.min(store);
    let mib = |k: u64| k as f64 / 1024.0;
    println!("| measurement | figure | ratio |");
    println!("| --- | --- | --- |");
    println!("| raw XChaCha20-Poly1305, 256 KiB chunks, one core | {aead:.0} MiB/s | baseline |");
    println!(
        "| raw synced writes of 256 KiB chunks and their records to a node store (chunk files), one per write | {store:.0} MiB/s | baseline |"
    );
    println!(
        "| the same in one RocksDB batch each, chunks in a BlobDB column family (before schema 6) | {blobdb:.0} MiB/s | {:.2} of the chunk files' |",
        blobdb / store
    );
    for (name, r) in [
        ("upload (Alice's device to her node)", &up),
        (
            "download (Bob's node fetches from Alice's, Bob's device decrypts)",
            &down,
        ),
    ] {
        let rate = mib_s(size, r.secs);
        println!(
            "| {file_mib} MiB file, {name} | {rate:.0} MiB/s ({:.1} s) | {:.2} of the slower baseline |",
            r.secs,
            rate / slowest
        );
    }
    println!(
        "| peak resident memory beyond idle: sender's device / recipient's device | {:.1} / {:.1} MiB (idle device {:.1} MiB) | |",
        mib(up.own_peak_kib.saturating_sub(idle_device)),
        mib(down.own_peak_kib.saturating_sub(idle_device)),
        mib(idle_device)
    );
    for (i, name) in ["Alice's node", "Bob's node"].iter().enumerate() {
        let peak = up.watched_peak_kib[i].max(down.watched_peak_kib[i]);
        println!(
            "| peak resident memory beyond idle: {name} | {:.1} MiB (idle {:.1} MiB) | |",
            mib(peak.saturating_sub(idle[i])),
            mib(idle[i])
        );
    }
    Ok(())
}
