//! Files in `sim run --real`: each file the model's users began is sent again on the real
//! stack, at the same time, with the same size, from the same user to the same recipient.
//!
//! The sender's device begins the upload on its home node (`BlobBegin` with the file's real
//! `BlobSpec`), sends the sealed chunks four in flight as the device library does
//! (`client::files::CHUNKS_IN_FLIGHT`; the bytes are filler of each chunk's sealed length, as in
//! the model: nodes hold ciphertext they cannot tell from it), then announces the file in an
//! envelope. When the recipient's receiving connection fetches that envelope, its device
//! fetches the chunks through its own home node, eight in flight
//! (`client::files::FETCHES_IN_FLIGHT`; that node fetches them across the federation from the
//! holder), checks each chunk's length, and says `BlobDone`, which deletes the blob. What the
//! recipient needs to fetch (holder, blob id, capability) travels beside the announcement in
//! this process, not inside it: the announcement's bytes are opaque to everything measured.
//!
//! Measured per file: begin-to-fetched time. A transfer cut off by a lost connection or a
//! node restart resumes (the upload from what the node says it holds, the download from the
//! chunks it has), as the device library's do.

use super::{RECONNECT_EVERY, Tally, connected, send_one};
use anyhow::Result;
use hestia_node::client::files::{CHUNKS_IN_FLIGHT, FETCHES_IN_FLIGHT};
use hestia_node::client::{ClientLibError, Connection};
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::file::{BlobId, Capability, cap_hash};
use hestia_protocol::identity::IdentityKey;
use hestia_protocol::wire::{BlobPhase, BlobSpec, ClientError, ClientOp, ClientResponse, Outgoing};
use hestia_simulations::sim::TracedFile;
use libp2p::Multiaddr;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// A file's fate on the real side.
#[derive(Clone, Default)]
pub struct RealFile {
    /// The sender's home node was up when it was due, so it was begun.
    pub begun: bool,
    pub announced: bool,
    /// The sender's node refused the upload for good.
    pub refused: bool,
    /// Begin-to-fetched time in ms, once the recipient has every chunk.
    pub fetched_after_ms: Option<f64>,
}

/// What one announcement tells its recipient, kept beside it in this process.
#[derive(Clone)]
pub struct Pointer {
    pub file: usize,
    holder: String,
    blob: BlobId,
    cap: Capability,
    spec: BlobSpec,
    begun: Instant,
}

/// The files of a run: the plan, their fates, and the announcements on their way.
pub struct Files {
    pub plan: Vec<TracedFile>,
    pub fates: Mutex<Vec<RealFile>>,
    announced: Mutex<HashMap<EnvelopeId, Pointer>>,
}

impl Files {
    pub fn new(plan: Vec<TracedFile>) -> Files {
        Files {
            fates: Mutex::new(vec![RealFile::default(); plan.len()]),
            plan,
            announced: Mutex::default(),
        }
    }

    /// The announcement `id` is a file's, for the recipient to fetch (taken once).
    pub fn take_announcement(&self, id: &EnvelopeId) -> Option<Pointer> {
        self.announced.lock().expect("announced").remove(id)
    }

    /// Every begun file is fetched.
    pub fn all_fetched(&self) -> bool {
        self.fates
            .lock()
            .expect("fates")
            .iter()
            .all(|f| !f.begun || f.refused || f.fetched_after_ms.is_some())
    }

    fn fate(&self, f: usize, change: impl FnOnce(&mut RealFile)) {
        change(&mut self.fates.lock().expect("fates")[f]);
    }
}

/// Where a sender's file goes.
pub struct Route<'a> {
    pub key: &'a IdentityKey,
    pub home: &'a Multiaddr,
    pub home_node: usize,
    pub holder_peer: &'a str,
    pub recipient: &'a IdentityKey,
    pub recipient_peer: &'a str,
}

/// Sends file `f` as the model's user did: upload, then the announcement. Gives up only when
/// `stop` says the run is over.
pub async fn send(
    files: &Files,
    f: usize,
    route: Route<'_>,
    tally: &Tally,
    rng: &mut impl rand::CryptoRng,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let planned = &files.plan[f];
    if tally.down[route.home_node].load(Ordering::SeqCst) {
        return Ok(()); // as in the model: a file is not begun while the home node is down
    }
    let begun = Instant::now();
    files.fate(f, |r| r.begun = true);
    let (mut blob, mut cap) = ([0u8; 16], [0u8; 32]);
    rng.fill_bytes(&mut blob);
    rng.fill_bytes(&mut cap);
    let (blob, cap) = (BlobId(blob), Capability(cap));
    let expires_at = hestia_node::driver::now_millis() + planned.ttl_ms;
    let spec = BlobSpec::of_file(planned.size, cap_hash(&cap), expires_at);
    let mut conn: Option<Connection> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match upload(&mut conn, &route, blob, &spec).await {
            Ok(true) => break,
            Ok(false) => {}
            // A refusal a retry cannot cure (too large, over quota): the file is not sent, as
            // in the model.
            Err(e)
                if matches!(
                    e.downcast_ref::<ClientLibError>(),
                    Some(ClientLibError::Refused(
                        ClientError::BlobTooLarge { .. }
                            | ClientError::BlobQuota
                            | ClientError::BadBlob
                    ))
                ) =>
            {
                files.fate(f, |r| r.refused = true);
                return Ok(());
            }
            Err(_) => conn = None,
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
    let envelope = Envelope::seal_body(
        rng,
        &route.recipient.user_id(),
        b"",
        hestia_node::driver::now_millis(),
        expires_at
            .saturating_sub(hestia_node::driver::now_millis())
            .max(1),
    )?;
    let pointer = Pointer {
        file: f,
        holder: route.holder_peer.to_string(),
        blob,
        cap,
        spec,
        begun,
    };
    // Noted before sending: the recipient may fetch it before the answer comes.
    files
        .announced
        .lock()
        .expect("announced")
        .insert(envelope.id, pointer);
    let out = Outgoing {
        to_node: route.recipient_peer.to_string(),
        envelope,
    };
    while !*stop.borrow() {
        if send_one(&mut conn, route.home, route.key, out.clone()).await {
            files.fate(f, |r| r.announced = true);
            break;
        }
    }
    Ok(())
}

/// One attempt at the upload: begins (or resumes) it and sends the chunks the node does not
/// hold; true once the node holds them all.
async fn upload(
    conn: &mut Option<Connection>,
    route: &Route<'_>,
    blob: BlobId,
    spec: &BlobSpec,
) -> Result<bool> {
    let Some(c) = connected(conn, route.home).await else {
        return Ok(false);
    };
    let op = ClientOp::BlobBegin {
        blob,
        spec: spec.clone(),
    };
    let state = match c.call(route.key, op).await? {
        ClientResponse::Blob(s) => s,
        other => anyhow::bail!("BlobBegin answered {other:?}"),
    };
    if state.phase != BlobPhase::Uploading {
        return Ok(state.phase == BlobPhase::Complete);
    }
    let mut out = 0usize;
    for i in (0..spec.chunks).filter(|i| !state.is_held(*i)) {
        if out == CHUNKS_IN_FLIGHT {
            stored(c, route.key).await?;
            out -= 1;
        }
        let len = spec.chunk_len(i).unwrap_or(0) as usize;
        let op = ClientOp::BlobPut {
            blob,
            index: i,
            chunk: vec![0x5a; len],
        };
        c.start(route.key, op).await;
        out += 1;
    }
    for _ in 0..out {
        stored(c, route.key).await?;
    }
    Ok(true)
}

async fn stored(c: &mut Connection, key: &IdentityKey) -> Result<()> {
    match c.next_answer(key).await {
        Some(Ok(ClientResponse::ChunkStored { .. })) => Ok(()),
        Some(Ok(other)) => anyhow::bail!("BlobPut answered {other:?}"),
        Some(Err(e)) => Err(e.into()),
        None => anyhow::bail!("no answer to BlobPut"),
    }
}

/// Fetches an announced file through the recipient's own home node, then tells the holder it
/// is done; records the begin-to-fetched time.
pub async fn fetch(
    files: Arc<Files>,
    p: Pointer,
    key: Arc<IdentityKey>,
    home: Multiaddr,
    mut stop: watch::Receiver<bool>,
) {
    let mut have = vec![false; p.spec.chunks as usize];
    let mut conn: Option<Connection> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        match fetch_missing(&mut conn, &p, &key, &home, &mut have).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(_) => conn = None,
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let after = p.begun.elapsed().as_secs_f64() * 1000.0;
    files.fate(p.file, |r| r.fetched_after_ms = Some(after));
    // The holder deletes the chunks; a failure here leaves them to expire, as a device would.
    if let Some(c) = connected(&mut conn, &home).await {
        let op = ClientOp::BlobDone {
            node: p.holder.clone(),
            blob: p.blob,
            cap: p.cap,
        };
        let _ = c.call(&key, op).await;
    }
}

/// One attempt at the chunks not yet had; true once every chunk is.
async fn fetch_missing(
    conn: &mut Option<Connection>,
    p: &Pointer,
    key: &IdentityKey,
    home: &Multiaddr,
    have: &mut [bool],
) -> Result<bool> {
    let Some(c) = connected(conn, home).await else {
        return Ok(false);
    };
    let missing: Vec<u32> = (0..p.spec.chunks).filter(|i| !have[*i as usize]).collect();
    let mut window = std::collections::VecDeque::new();
    let mut next = missing.into_iter();
    loop {
        while window.len() < FETCHES_IN_FLIGHT {
            let Some(i) = next.next() else { break };
            let op = ClientOp::BlobGet {
                node: p.holder.clone(),
                blob: p.blob,
                index: i,
                cap: p.cap.clone(),
            };
            c.start(key, op).await;
            window.push_back(i);
        }
        let Some(i) = window.pop_front() else {
            return Ok(true);
        };
        match c.next_answer(key).await {
            Some(Ok(ClientResponse::Chunk(bytes)))
                if Some(bytes.len() as u32) == p.spec.chunk_len(i) =>
            {
                have[i as usize] = true;
            }
            Some(Ok(other)) => anyhow::bail!("BlobGet answered {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("no answer to BlobGet"),
        }
    }
}
