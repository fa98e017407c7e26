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

/// Alice (on node 0) with Bob (on node `bob_on`) as her contact, and a file of `size` bytes
/// for her to send: its path and SHA-256.
fn alice_bob_and_a_file(net: &Net, bob_on: usize, size: usize) -> (std::path::PathBuf, [u8; 32]) {
    net.account("alice", 0);
    let bob = net.account("bob", bob_on);
    net.ok("alice", &["contact", "add", "bob", &bob]);
    let src = net.tmp.path().join(NAME);
    let digest = write_file(&src, size);
    (src, digest)
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
    let (src, want) = alice_bob_and_a_file(&net, 1, 64 << 20);

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
    // Chunks are files beside the database; none is left on either node.
    for i in 0..2 {
        let chunks = net.node_dir(i).join("db.chunks");
        let left = std::fs::read_dir(&chunks).map_or(0, |d| d.count());
        assert_eq!(
            left,
            0,
            "node {i} keeps chunk files in {}",
            chunks.display()
        );
    }
    let list = net.ok("alice", &["file", "list"]);
    assert!(list.contains("fetched by their device"), "{list}");
    let list = net.ok("bob", &["file", "list"]);
    assert!(list.contains("downloaded to"), "{list}");
    net.check_stores(&["alice", "bob"]);
}

#[test]
fn an_upload_killed_midway_resumes_without_sending_stored_chunks_again() {
    let net = Net::start(1);
    let (src, want) = alice_bob_and_a_file(&net, 0, 48 << 20);
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
    assert!(
        list.contains("interrupted") && list.contains("% uploaded"),
        "{list}"
    );
    // Any later command that talks to the node continues it (here: Alice reads her inbox),
    // from exactly the chunks the node holds: none of them is sent again.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let held = chunks_held(&net, 0);
    let resumed = net.run("alice", &["inbox"]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    let skipped = format!("resuming: {:.1} MiB of 48.0 MiB", f64::from(held) / 4.0);
    assert!(
        err.contains(&skipped),
        "{held} chunks held, so {skipped:?}: {err}"
    );
    assert!(
        err.contains("continued an interrupted upload to bob"),
        "{err}"
    );
    assert!(!net.ok("alice", &["file", "list"]).contains("interrupted"));
    let inbox = net.ok("bob", &["inbox"]);
    let id = file_id(&inbox);
    let out = net.tmp.path().join("got.bin");
    net.ok("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
    assert_eq!(digest_of(&out), want);
}

/// Bob's stored reference to the file of message `id`, changed by `edit` (as a modified
/// sender's client could have written it: the letter is what the sender chose).
fn tamper(net: &Net, id: &str, edit: impl FnOnce(&mut hestia_store::client::StoredFile)) {
    use hestia_store::client::{ClientDb, ClientWrite};
    let mut db = ClientDb::open(&net.home("bob"), None).unwrap();
    let (envelope, mut f) = db
        .files()
        .unwrap()
        .into_iter()
        .find(|(e, _)| e.to_hex().starts_with(id))
        .unwrap();
    edit(&mut f);
    db.commit(&[ClientWrite::File(envelope, f)]).unwrap();
}

#[test]
fn a_wrong_key_a_wrong_digest_another_files_capability_and_an_expired_file_fail_plainly_and_write_nothing()
 {
    let net = Net::start(1);
    let (src, want) = alice_bob_and_a_file(&net, 0, 700_000);
    net.ok("alice", &["send", "bob", "--file", src.to_str().unwrap()]);
    let id = file_id(&net.ok("bob", &["inbox"]));
    // A second file, whose capability is somebody else's as far as the first is concerned.
    let other_src = net.tmp.path().join("other.bin");
    write_file(&other_src, 300_000);
    net.ok(
        "alice",
        &["send", "bob", "--file", other_src.to_str().unwrap()],
    );
    let other_id = file_id(&net.ok("bob", &["inbox"]));
    let other_cap = {
        let mut cap = None;
        tamper(&net, &other_id, |f| cap = Some(f.file.cap.clone()));
        cap.unwrap()
    };
    let out = net.tmp.path().join("out.bin");
    let get = |net: &Net| net.run("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
    let nothing_written = |why: &str| {
        assert!(!out.exists(), "{why}: something at the output path");
        let part = net.tmp.path().join("out.bin.hestia-part");
        assert!(!part.exists(), "{why}: a partial file left");
    };

    let key = {
        let mut key = None;
        tamper(&net, &id, |f| {
            key = Some(f.file.cipher.key.clone());
            f.file.cipher.key.0[0] ^= 1;
        });
        key.unwrap()
    };
    let r = get(&net);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("did not verify"),
        "{err}"
    );
    nothing_written("wrong key");

    // The right key, a digest that is not the file's: every chunk opens, the whole fails.
    tamper(&net, &id, |f| {
        f.file.cipher.key = key.clone();
        f.file.digest[0] ^= 1;
    });
    let r = get(&net);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("did not verify"),
        "{err}"
    );
    nothing_written("wrong digest");

    // The capability of another file: the node answers as for an unknown file, and keeps
    // serving the right one.
    let cap = {
        let mut cap = None;
        tamper(&net, &id, |f| {
            f.file.digest[0] ^= 1;
            cap = Some(std::mem::replace(&mut f.file.cap, other_cap.clone()));
        });
        cap.unwrap()
    };
    let r = get(&net);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("file expired"), "{err}");
    nothing_written("another file's capability");
    tamper(&net, &id, |f| {
        f.file.cap = cap.clone();
        f.state = hestia_store::client::FileState::Received;
    });

    // Put right, it downloads; once fetched the node deletes it, and asking for it again
    // (say, from another copy of the reference) is "file expired".
    net.ok("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
    assert_eq!(digest_of(&out), want);
    std::fs::remove_file(&out).unwrap();
    tamper(&net, &id, |f| {
        f.state = hestia_store::client::FileState::Received
    });
    let r = get(&net);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("file expired"), "{err}");
    nothing_written("expired");
    assert!(net.ok("bob", &["file", "list"]).contains("file expired"));
    // An id that names no file.
    let r = net.run("bob", &["file", "get", "0000000000ff"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("no file"), "{err}");
}

#[test]
fn a_file_larger_than_the_node_takes_is_refused_before_any_chunk_is_sent() {
    let net = Net::start_with(1, &["--max-file-mib", "1"]);
    let (src, _) = alice_bob_and_a_file(&net, 0, 3 << 20);
    let r = net.run("alice", &["send", "bob", "--file", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("larger than this node accepts"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one plain line: {err}");
    let db = NodeDb::open_read_only(&net.node_dir(0).join("db")).unwrap();
    assert!(db.load().unwrap().blobs.is_empty());
    drop(db);
    let list = net.ok("alice", &["file", "list"]);
    assert!(!list.contains("interrupted"), "nothing to resume: {list}");
    // A file within the limit goes.
    write_file(&src, 512 << 10);
    net.ok("alice", &["send", "bob", "--file", src.to_str().unwrap()]);
    assert!(net.ok("bob", &["inbox"]).contains(NAME));
}

/// Chunks node `i` holds of all uploads.
fn chunks_held(net: &Net, i: usize) -> u32 {
    let db = NodeDb::open_read_only(&net.node_dir(i).join("db")).unwrap();
    db.load()
        .unwrap()
        .blobs
        .iter()
        .map(|(_, r)| r.held.iter().map(|b| b.count_ones()).sum::<u32>())
        .sum()
}

/// Waits (bounded) until `ready` holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ready() {
        assert!(start.elapsed() < hestia_tests::WAIT, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_node_killed_mid_upload_and_a_download_killed_midway_both_resume_to_the_same_bytes() {
    let mut net = Net::start(2);
    let (src, want) = alice_bob_and_a_file(&net, 1, 48 << 20);

    // SIGKILL Alice's node while her device uploads: the send fails; after the node restarts,
    // the same send continues from what the node had made durable.
    let (mut child, _) =
        net.spawn_client("alice", &["send", "bob", "--file", src.to_str().unwrap()]);
    wait_until("the upload starts", || chunks_held(&net, 0) >= 8);
    net.kill9(0);
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the send cannot have finished without its node"
    );
    net.restart(0);
    let resumed = net.run("alice", &["send", "bob", "--file", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(err.contains("resuming:"), "{err}");
    if !resumed.status.success() {
        // Just restarted, her node may not have found Bob's again to fetch his prekeys: the
        // upload is whole and kept, and her next command sends it.
        assert!(err.contains("did not answer"), "{err}");
        wait_until("the file's message goes", || {
            let out = net.run("alice", &["status"]);
            String::from_utf8_lossy(&out.stderr).contains("continued an interrupted upload")
        });
    }

    // Kill Bob's download midway: the rerun continues from the verified chunks.
    let id = file_id(&net.ok("bob", &["inbox"]));
    let out = net.tmp.path().join("got.bin");
    let part = net.tmp.path().join("got.bin.hestia-part");
    let (mut child, _) =
        net.spawn_client("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
    wait_until("the download starts", || {
        std::fs::metadata(&part).is_ok_and(|m| m.len() >= 4 << 20)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !out.exists(),
        "no file at the output path before it is verified"
    );
    let again = net.run("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && err.contains("resuming:"), "{err}");
    assert_eq!(digest_of(&out), want);
    assert!(!part.exists());
}

#[test]
fn either_node_killed_during_a_download_leaves_a_download_that_resumes_to_the_same_bytes() {
    let mut net = Net::start(2);
    let (src, want) = alice_bob_and_a_file(&net, 1, 48 << 20);
    net.ok("alice", &["send", "bob", "--file", src.to_str().unwrap()]);
    let id = file_id(&net.ok("bob", &["inbox"]));
    let out = net.tmp.path().join("got.bin");
    let part = net.tmp.path().join("got.bin.hestia-part");
    let mut reached = 0;
    // The holding node (Alice's), then the fetching one (Bob's), each killed mid-download.
    for node in [0, 1] {
        let (mut child, _) =
            net.spawn_client("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
        wait_until("the download moves on", || {
            std::fs::metadata(&part).is_ok_and(|m| m.len() >= reached + (4 << 20))
        });
        net.kill9(node);
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the download cannot finish without node {node}"
        );
        assert!(
            !out.exists(),
            "nothing at the output path before it is verified"
        );
        reached = std::fs::metadata(&part).unwrap().len();
        net.restart(node);
    }
    // Both back: it resumes from what was verified, and the bytes are the file's.
    let mut said = String::new();
    wait_until("the download completes", || {
        let r = net.run("bob", &["file", "get", &id, "--out", out.to_str().unwrap()]);
        said = String::from_utf8_lossy(&r.stderr).into_owned();
        r.status.success()
    });
    assert!(
        said.contains("resuming:"),
        "it continued, not restarted: {said}"
    );
    assert_eq!(digest_of(&out), want);
    assert!(!part.exists());
}
