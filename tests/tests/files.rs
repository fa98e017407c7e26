//! Files end to end: real nodes and devices on loopback, a 64 MiB file across two nodes.

use hestia_store::node::{NodeDb, NodeStore};
use hestia_tests::{Net, files_containing};
use sha2::{Digest, Sha256};
use std::path::Path;

/// A marker written all through the file: it must never be found on a node's disk.
const MARKER: &[u8] = b"HESTIA-FILE-PLAINTEXT-MARKER-5c1d";
const NAME: &str = "talk-4e7b.bin";

/// `size` bytes: the marker, then a counter, over and over (no two chunks alike).
fn write_file(path: &Path, size: usize) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(size + 64);
    let mut i = 0u64;
    while bytes.len() < size {
        bytes.extend_from_slice(MARKER);
        bytes.extend_from_slice(&i.to_le_bytes());
        i += 1;
    }
    bytes.truncate(size);
    std::fs::write(path, &bytes).unwrap();
    Sha256::digest(&bytes).into()
}

fn digest_of(path: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).unwrap()).into()
}

/// The file id in an inbox line `... id <12 hex> ...`.
fn file_id(inbox: &str) -> String {
    let at = inbox
        .find(" id ")
        .unwrap_or_else(|| panic!("no file id in {inbox}"));
    inbox[at + 4..at + 16].to_string()
}

#[test]
fn a_64_mib_file_crosses_two_nodes_as_ciphertext_and_leaves_no_chunk_behind() {
    let net = Net::start(2);
    net.account("alice", 0);
    let bob = net.account("bob", 1);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    let src = net.tmp.path().join(NAME);
    let want = write_file(&src, 64 << 20);

    let sent = net.ok(
        "alice",
        &[
            "send",
            "bob",
            "--file",
            src.to_str().unwrap(),
            "--caption",
            "the talk",
        ],
    );
    assert!(sent.contains("to bob"), "{sent}");
    let inbox = net.ok("bob", &["inbox"]);
    assert!(
        inbox.contains("alice: the talk") && inbox.contains(NAME) && inbox.contains("64.0 MiB"),
        "{inbox}"
    );
    let id = file_id(&inbox);

    let out = net.tmp.path().join("downloads");
    std::fs::create_dir(&out).unwrap();
    let got = net.ok("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
    assert!(got.contains("verified"), "{got}");
    assert_eq!(
        digest_of(&out.join(NAME)),
        want,
        "the bytes arrive identical"
    );
    // Asking again does not download again, and the file is not overwritten.
    let again = net.ok("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
    assert!(again.contains("verified"), "{again}");

    for i in 0..2 {
        let dir = net.node_dir(i);
        let hits = files_containing(&dir, MARKER);
        assert!(hits.is_empty(), "node {i} stored plaintext in {hits:?}");
        let hits = files_containing(&dir, NAME.as_bytes());
        assert!(
            hits.is_empty(),
            "node {i} stored the file's name in {hits:?}"
        );
    }
    // Fetched: the holding node keeps no chunk, only the record that says so.
    let db = NodeDb::open_read_only(&net.node_dir(0).join("db")).unwrap();
    let blobs = db.load().unwrap().blobs;
    assert_eq!(blobs.len(), 1);
    assert!(blobs[0].1.held.iter().all(|b| *b == 0));
    for index in 0..blobs[0].1.spec.chunks {
        assert_eq!(db.blob_chunk(&blobs[0].0, index).unwrap(), None);
    }
    drop(db);
    let list = net.ok("alice", &["file", "list"]);
    assert!(list.contains("fetched by their device"), "{list}");
    let list = net.ok("bob", &["file", "list"]);
    assert!(list.contains("downloaded to"), "{list}");
    net.check_stores(&["alice", "bob"]);
}

#[test]
fn an_upload_killed_midway_resumes_without_sending_stored_chunks_again() {
    let net = Net::start(1);
    net.account("alice", 0);
    let bob = net.account("bob", 0);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    let src = net.tmp.path().join(NAME);
    let want = write_file(&src, 48 << 20);
    let (mut child, _) =
        net.spawn_client("alice", &["send", "bob", "--file", src.to_str().unwrap()]);
    // Kill it once the node holds part of the upload.
    let start = std::time::Instant::now();
    loop {
        let db = NodeDb::open_read_only(&net.node_dir(0).join("db")).unwrap();
        let held: u32 = db
            .load()
            .unwrap()
            .blobs
            .iter()
            .map(|(_, r)| r.held.iter().map(|b| b.count_ones()).sum::<u32>())
            .sum();
        if held >= 8 {
            break;
        }
        assert!(start.elapsed().as_secs() < 60, "the upload never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let list = net.ok("alice", &["file", "list"]);
    assert!(list.contains("interrupted"), "{list}");
    let resumed = net.run("alice", &["send", "bob", "--file", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(err.contains("resuming:"), "the rerun continued: {err}");
    let inbox = net.ok("bob", &["inbox"]);
    let id = file_id(&inbox);
    let out = net.tmp.path().join("got.bin");
    net.ok("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
    assert_eq!(digest_of(&out), want);
}
