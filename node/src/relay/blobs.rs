//! Encrypted file chunks held for local users' uploads (`hestia_protocol::file`): what the relay
//! core decides about them. Who may add a chunk (the uploader), what fits (the spec the upload
//! began with, the node's largest blob, the user's quota and uploads at once), when a blob is
//! complete, who may fetch it (the holder of the capability whose hash it was begun with), and
//! when its chunks go (fetched, expired, or an upload left idle).
//!
//! Chunk bytes are never kept here: a stored chunk passes through in a [`NodeWrite`], and a
//! fetch is an output naming the chunk that the driver reads from the store. What stays in
//! memory per blob is its record: the spec and one bit per chunk (at most 1 KiB for a 2 GiB
//! file).

use super::{HashMap, Limits};
use hestia_protocol::Millis;
use hestia_protocol::envelope::MAX_TTL_MS;
use hestia_protocol::file::{BlobId, Capability, cap_hash};
use hestia_protocol::identity::UserId;
use hestia_protocol::wire::{BlobPhase, BlobSpec, BlobState, ClientError};
use hestia_store::node::{BlobRecord, NodeWrite};
use std::collections::BTreeSet;

/// Largest blob a node takes by default (sealed bytes): a 2 GiB file with its padding and tags.
pub const MAX_BLOB_BYTES: u64 = (2 << 30) + (256 << 20);
/// Sealed bytes one user may have stored at once, by default.
pub const BLOB_QUOTA_PER_USER: u64 = 8 << 30;
/// Sealed bytes all users together may have stored at once, by default: the node's disk
/// budget for files, apart from mail's.
pub const MAX_BLOB_STORED_BYTES: u64 = 256 << 30;
/// Uploads one user may have going (begun, not complete) at once.
pub const MAX_UPLOADS_PER_USER: usize = 4;
/// Blobs one user may have here at once, fetched ones (kept, without chunks, so the sender
/// can see they were fetched) included.
pub const MAX_BLOBS_PER_USER: usize = 1_000;
/// Blobs on the node at once: bounds this table.
pub const MAX_BLOBS: usize = 200_000;
/// An upload with no chunk for this long is deleted with what it holds.
pub const IDLE_UPLOAD_MS: Millis = 24 * 3600 * 1000;

/// One blob: its stored record, and the deadline under which it sits in `Blobs::deadlines`.
struct Blob {
    rec: BlobRecord,
    deadline: Millis,
}

impl Blob {
    /// Chunks held (counted from the record's chunk map: at most 1 KiB).
    fn held(&self) -> u32 {
        self.rec.held.iter().map(|b| b.count_ones()).sum()
    }

    fn state(&self) -> BlobState {
        BlobState {
            phase: self.rec.phase,
            chunks: self.rec.spec.chunks,
            held: self.rec.held.clone(),
            expires_at: self.rec.spec.expires_at,
        }
    }

    /// When this blob is deleted if nothing else happens.
    fn due(&self) -> Millis {
        match self.rec.phase {
            BlobPhase::Uploading => self
                .rec
                .spec
                .expires_at
                .min(self.rec.touched_at.saturating_add(IDLE_UPLOAD_MS)),
            BlobPhase::Complete | BlobPhase::Fetched => self.rec.spec.expires_at,
        }
    }

    /// Sealed bytes it holds against its owner's quota (a fetched blob holds none).
    fn charged(&self) -> u64 {
        match self.rec.phase {
            BlobPhase::Uploading | BlobPhase::Complete => self.rec.spec.total_bytes(),
            BlobPhase::Fetched => 0,
        }
    }
}

#[derive(Default)]
struct Owner {
    bytes: u64,
    uploading: usize,
    blobs: usize,
}

#[derive(Default)]
pub(super) struct Blobs {
    map: HashMap<BlobId, Blob>,
    owners: HashMap<UserId, Owner>,
    deadlines: BTreeSet<(Millis, BlobId)>,
    stored_bytes: u64,
}

fn bit(held: &[u8], index: u32) -> bool {
    held.get(index as usize / 8)
        .is_some_and(|b| b & (1 << (index % 8)) != 0)
}

/// Whether `cap` opens a blob begun with `hash` (constant time in the hash's bytes).
fn opens(cap: &Capability, hash: &[u8; 32]) -> bool {
    let got = cap_hash(cap);
    got.iter().zip(hash).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

impl Blobs {
    /// The blobs the store holds, after a restart.
    pub(super) fn from_records(records: Vec<(BlobId, BlobRecord)>) -> Blobs {
        let mut blobs = Blobs::default();
        for (id, rec) in records {
            blobs.insert(id, Blob { rec, deadline: 0 });
        }
        blobs
    }

    fn insert(&mut self, id: BlobId, mut blob: Blob) {
        blob.deadline = blob.due();
        self.deadlines.insert((blob.deadline, id));
        let o = self.owners.entry(blob.rec.owner).or_default();
        o.bytes += blob.charged();
        o.blobs += 1;
        if blob.rec.phase == BlobPhase::Uploading {
            o.uploading += 1;
        }
        self.stored_bytes += blob.charged();
        self.map.insert(id, blob);
    }

    fn remove(&mut self, id: &BlobId) -> Option<Blob> {
        let blob = self.map.remove(id)?;
        self.deadlines.remove(&(blob.deadline, *id));
        let owner = blob.rec.owner;
        if let Some(o) = self.owners.get_mut(&owner) {
            o.bytes -= blob.charged();
            o.blobs -= 1;
            if blob.rec.phase == BlobPhase::Uploading {
                o.uploading -= 1;
            }
            if o.blobs == 0 {
                self.owners.remove(&owner);
            }
        }
        self.stored_bytes -= blob.charged();
        Some(blob)
    }

    /// Deletes every blob `owner` uploaded (the operator deleted the account).
    pub(super) fn remove_owned(&mut self, owner: &UserId, writes: &mut Vec<NodeWrite>) {
        if !self.owners.contains_key(owner) {
            return;
        }
        let ids: Vec<BlobId> = self
            .map
            .iter()
            .filter(|(_, b)| b.rec.owner == *owner)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove(&id);
            writes.push(NodeWrite::DeleteBlob(id));
        }
    }

    /// Sealed bytes held for all users (fetched blobs hold none).
    pub(super) fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Begins an upload, or answers where one stands if the same owner begins the same blob
    /// with the same spec again (a resume). Refused before any chunk is sent when it cannot fit.
    pub(super) fn begin(
        &mut self,
        owner: UserId,
        id: BlobId,
        spec: BlobSpec,
        now: Millis,
        limits: &Limits,
        writes: &mut Vec<NodeWrite>,
    ) -> Result<BlobState, ClientError> {
        if let Some(b) = self.map.get(&id) {
            return if b.rec.owner == owner && b.rec.spec == spec {
                Ok(b.state())
            } else if b.rec.owner == owner {
                Err(ClientError::BadBlob)
            } else {
                // Another user's id: say nothing of it.
                Err(ClientError::NoSuchBlob)
            };
        }
        let full = hestia_protocol::file::SEALED_CHUNK_BYTES;
        let tag = hestia_protocol::file::TAG_BYTES as u32;
        if spec.chunks == 0 || spec.last_chunk_bytes < tag || spec.last_chunk_bytes > full {
            return Err(ClientError::BadBlob);
        }
        if spec.expires_at <= now || spec.expires_at > now.saturating_add(MAX_TTL_MS) {
            return Err(ClientError::BadBlob);
        }
        let size = spec.total_bytes();
        if size > limits.max_blob_bytes {
            return Err(ClientError::BlobTooLarge {
                max: limits.max_blob_bytes,
            });
        }
        let o = self.owners.get(&owner);
        let (bytes, uploading, blobs) = o.map_or((0, 0, 0), |o| (o.bytes, o.uploading, o.blobs));
        if bytes.saturating_add(size) > limits.blob_quota
            || self.stored_bytes.saturating_add(size) > limits.blob_total
            || uploading >= MAX_UPLOADS_PER_USER
            || blobs >= MAX_BLOBS_PER_USER
            || self.map.len() >= MAX_BLOBS
        {
            return Err(ClientError::BlobQuota);
        }
        let rec = BlobRecord {
            owner,
            held: vec![0; (spec.chunks as usize).div_ceil(8)],
            spec,
            phase: BlobPhase::Uploading,
            touched_at: now,
        };
        writes.push(NodeWrite::PutBlob(id, rec.clone()));
        let blob = Blob { rec, deadline: 0 };
        let state = blob.state();
        self.insert(id, blob);
        Ok(state)
    }

    /// Stores one chunk of `owner`'s upload; the chunks held after it. A chunk already held is
    /// not written again (a resumed upload may resend the last one).
    pub(super) fn put(
        &mut self,
        owner: UserId,
        id: BlobId,
        index: u32,
        chunk: Vec<u8>,
        now: Millis,
        writes: &mut Vec<NodeWrite>,
    ) -> Result<u32, ClientError> {
        let Some(b) = self.map.get(&id).filter(|b| b.rec.owner == owner) else {
            return Err(ClientError::NoSuchBlob);
        };
        if b.rec.phase != BlobPhase::Uploading {
            return Ok(b.held());
        }
        if b.rec.spec.chunk_len(index) != Some(chunk.len() as u32) {
            return Err(ClientError::BadBlob);
        }
        if bit(&b.rec.held, index) {
            return Ok(b.held());
        }
        let mut blob = self.remove(&id).expect("found above");
        blob.rec.held[index as usize / 8] |= 1 << (index % 8);
        blob.rec.touched_at = now;
        let held = blob.held();
        if held == blob.rec.spec.chunks {
            blob.rec.phase = BlobPhase::Complete;
        }
        writes.push(NodeWrite::PutChunk(id, index, chunk));
        writes.push(NodeWrite::PutBlob(id, blob.rec.clone()));
        self.insert(id, blob);
        Ok(held)
    }

    /// Where `owner`'s upload stands.
    pub(super) fn status(&self, owner: &UserId, id: &BlobId) -> Result<BlobState, ClientError> {
        match self.map.get(id) {
            Some(b) if b.rec.owner == *owner => Ok(b.state()),
            _ => Err(ClientError::NoSuchBlob),
        }
    }

    /// Whether chunk `index` of a complete blob may be read with `cap`.
    pub(super) fn may_fetch(&self, id: &BlobId, index: u32, cap: &Capability, now: Millis) -> bool {
        self.map.get(id).is_some_and(|b| {
            b.rec.phase == BlobPhase::Complete
                && index < b.rec.spec.chunks
                && b.rec.spec.expires_at > now
                && opens(cap, &b.rec.spec.cap_hash)
        })
    }

    /// The capability's holder has the whole file: the chunks go, the record stays (phase
    /// `Fetched`, nothing charged) until its expiry so the uploader can see it was fetched.
    /// Whether the capability opened a complete blob here.
    pub(super) fn done(
        &mut self,
        id: &BlobId,
        cap: &Capability,
        now: Millis,
        writes: &mut Vec<NodeWrite>,
    ) -> bool {
        let Some(b) = self.map.get(id) else {
            return false;
        };
        if !opens(cap, &b.rec.spec.cap_hash) || b.rec.spec.expires_at <= now {
            return false;
        }
        match b.rec.phase {
            BlobPhase::Fetched => true,
            BlobPhase::Uploading => false,
            BlobPhase::Complete => {
                let mut blob = self.remove(id).expect("found above");
                blob.rec.phase = BlobPhase::Fetched;
                blob.rec.held.iter_mut().for_each(|b| *b = 0);
                writes.push(NodeWrite::DeleteChunks(*id));
                writes.push(NodeWrite::PutBlob(*id, blob.rec.clone()));
                self.insert(*id, blob);
                true
            }
        }
    }

    /// Deletes what is due at `now`: expired blobs and idle uploads. The ids deleted.
    pub(super) fn expire(&mut self, now: Millis, writes: &mut Vec<NodeWrite>) -> usize {
        let mut n = 0;
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.remove(&id);
            writes.push(NodeWrite::DeleteBlob(id));
            n += 1;
        }
        n
    }

    pub(super) fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Harness, T0, restarted};
    use super::super::{BatchId, Token};
    use super::*;
    use hestia_protocol::file::SEALED_CHUNK_BYTES;
    use hestia_protocol::wire::{
        Auth, ClientAuth, ClientOp, ClientRequest, ClientResponse, FedRequest, FedResponse,
    };
    use hestia_store::node::NodeStore;

    const FULL: usize = SEALED_CHUNK_BYTES as usize;
    const DAY: Millis = 24 * 3600 * 1000;

    fn spec(chunks: u32, cap: &Capability) -> BlobSpec {
        BlobSpec {
            chunks,
            last_chunk_bytes: 1000,
            cap_hash: cap_hash(cap),
            expires_at: T0 + 7 * DAY,
        }
    }

    fn chunk(spec: &BlobSpec, index: u32) -> Vec<u8> {
        vec![index as u8; spec.chunk_len(index).unwrap() as usize]
    }

    /// Bob's device asks his node B; B's federation requests and its answers to Bob.
    fn bob(
        h: &mut Harness,
        now: Millis,
        op: ClientOp,
    ) -> (Vec<(BatchId, FedRequest)>, Vec<ClientResponse>) {
        let auth = ClientAuth::sign(&h.bob, "NodeB", "bob-device", now, &op).unwrap();
        h.b.handle_client(
            now,
            Token(77),
            "bob-device",
            ClientRequest {
                auth: Auth::Signed(Box::new(auth)),
                op,
            },
        );
        let (reqs, _, answers) = h.drain(false);
        (
            reqs.into_iter()
                .map(|(b, to, r)| {
                    assert_eq!(to, "NodeA");
                    (b, r)
                })
                .collect(),
            answers,
        )
    }

    /// Node A answers node B's requests; B's answers to Bob.
    fn a_answers_b(
        h: &mut Harness,
        now: Millis,
        reqs: Vec<(BatchId, FedRequest)>,
    ) -> Vec<ClientResponse> {
        for (batch, req) in reqs {
            h.a.handle_fed_request(now, Token(5), "NodeB", req);
            let (_, mut fed, _) = h.drain(true);
            h.b.handle_fed_response(now, batch, Ok(fed.remove(0)));
        }
        h.drain(false).2
    }

    #[test]
    fn an_upload_resumes_across_a_restart_and_the_recipients_node_fetches_it() {
        let mut h = Harness::new();
        let cap = Capability([9; 32]);
        let id = BlobId([1; 16]);
        let sp = spec(3, &cap);
        let begun = h.client(
            true,
            T0,
            ClientOp::BlobBegin {
                blob: id,
                spec: sp.clone(),
            },
        );
        assert!(
            matches!(&begun[..], [ClientResponse::Blob(s)] if s.phase == BlobPhase::Uploading && s.held_count() == 0)
        );
        for i in [0, 2] {
            let put = ClientOp::BlobPut {
                blob: id,
                index: i,
                chunk: chunk(&sp, i),
            };
            assert!(matches!(
                h.client(true, T0, put)[..],
                [ClientResponse::ChunkStored { .. }]
            ));
        }
        // Not complete: nobody can fetch it yet.
        let get = |index| ClientOp::BlobGet {
            node: "NodeA".into(),
            blob: id,
            index,
            cap: cap.clone(),
        };
        let (reqs, _) = bob(&mut h, T0, get(0));
        assert_eq!(
            a_answers_b(&mut h, T0, reqs),
            vec![ClientResponse::Error(ClientError::NoSuchBlob)]
        );

        // Node A restarts; beginning again is a resume that says which chunks it has.
        h.a = restarted("NodeA", &h.store_a, T0 + 1000);
        let again = h.client(
            true,
            T0 + 1000,
            ClientOp::BlobBegin {
                blob: id,
                spec: sp.clone(),
            },
        );
        let [ClientResponse::Blob(state)] = &again[..] else {
            panic!("{again:?}")
        };
        assert!(state.is_held(0) && !state.is_held(1) && state.is_held(2));
        // A chunk sent twice is stored once; the missing one completes the blob.
        for (index, held) in [(2, 2), (1, 3)] {
            let put = ClientOp::BlobPut {
                blob: id,
                index,
                chunk: chunk(&sp, index),
            };
            assert_eq!(
                h.client(true, T0 + 1000, put),
                vec![ClientResponse::ChunkStored { held }]
            );
        }

        // Bob's node fetches each chunk for him; node A never sees Bob's device.
        for i in 0..3 {
            let (reqs, _) = bob(&mut h, T0 + 2000, get(i));
            assert!(matches!(&reqs[..], [(_, FedRequest::BlobGet { index, .. })] if *index == i));
            assert_eq!(
                a_answers_b(&mut h, T0 + 2000, reqs),
                vec![ClientResponse::Chunk(chunk(&sp, i))]
            );
        }
        // Without the capability: nothing, and no hint that it exists.
        let wrong = ClientOp::BlobGet {
            node: "NodeA".into(),
            blob: id,
            index: 0,
            cap: Capability([8; 32]),
        };
        let (reqs, _) = bob(&mut h, T0 + 2000, wrong);
        assert_eq!(
            a_answers_b(&mut h, T0 + 2000, reqs),
            vec![ClientResponse::Error(ClientError::NoSuchBlob)]
        );

        // Done: the chunks go, Alice sees it was fetched, a second fetch finds nothing.
        let (reqs, _) = bob(
            &mut h,
            T0 + 3000,
            ClientOp::BlobDone {
                node: "NodeA".into(),
                blob: id,
                cap: cap.clone(),
            },
        );
        assert_eq!(
            a_answers_b(&mut h, T0 + 3000, reqs),
            vec![ClientResponse::BlobDeleted]
        );
        assert_eq!(h.store_a.blob_chunk(&id, 0).unwrap(), None);
        let st = h.client(true, T0 + 3000, ClientOp::BlobStatus(id));
        assert!(matches!(&st[..], [ClientResponse::Blob(s)] if s.phase == BlobPhase::Fetched));
        assert_eq!(h.a.stats().blob_bytes, 0);
        let (reqs, _) = bob(&mut h, T0 + 3000, get(0));
        assert_eq!(
            a_answers_b(&mut h, T0 + 3000, reqs),
            vec![ClientResponse::Error(ClientError::NoSuchBlob)]
        );
        // At its expiry even the record goes.
        h.a.handle_timeout(T0 + 8 * DAY);
        h.drain(true);
        assert!(h.store_a.load().unwrap().blobs.is_empty());
    }

    #[test]
    fn uploads_that_do_not_fit_are_refused_before_a_chunk_is_sent() {
        let mut h = Harness::new();
        let cap = Capability([9; 32]);
        let begin = |b: u8, spec: BlobSpec| ClientOp::BlobBegin {
            blob: BlobId([b; 16]),
            spec,
        };
        let err = |e| vec![ClientResponse::Error(e)];
        // Larger than the node takes.
        let huge = spec((MAX_BLOB_BYTES / FULL as u64) as u32 + 2, &cap);
        assert_eq!(
            h.client(true, T0, begin(1, huge)),
            err(ClientError::BlobTooLarge {
                max: MAX_BLOB_BYTES
            })
        );
        // Expiry in the past or beyond what the node keeps.
        let mut late = spec(1, &cap);
        late.expires_at = T0 + MAX_TTL_MS + 1;
        assert_eq!(
            h.client(true, T0, begin(2, late)),
            err(ClientError::BadBlob)
        );
        // A last chunk longer than a chunk.
        let mut odd = spec(1, &cap);
        odd.last_chunk_bytes = FULL as u32 + 1;
        assert_eq!(h.client(true, T0, begin(3, odd)), err(ClientError::BadBlob));
        // Four uploads at once, not five; 8 GiB in all, not more.
        let big = spec(2000, &cap); // ~500 MiB each
        for b in 10..10 + MAX_UPLOADS_PER_USER as u8 {
            assert!(matches!(
                h.client(true, T0, begin(b, big.clone()))[..],
                [ClientResponse::Blob(_)]
            ));
        }
        assert_eq!(
            h.client(true, T0, begin(20, spec(1, &cap))),
            err(ClientError::BlobQuota)
        );
        // Chunks must fit the spec; only the uploader may add them.
        let put = |index, len| ClientOp::BlobPut {
            blob: BlobId([10; 16]),
            index,
            chunk: vec![0; len],
        };
        assert_eq!(h.client(true, T0, put(0, 1000)), err(ClientError::BadBlob));
        assert_eq!(
            h.client(true, T0, put(2000, FULL)),
            err(ClientError::BadBlob)
        );
        let (_, answers) = bob(&mut h, T0, ClientOp::BlobStatus(BlobId([10; 16])));
        assert_eq!(
            answers,
            err(ClientError::NoSuchBlob),
            "Bob's node holds no such blob"
        );
        // Another spec for a blob already begun.
        assert_eq!(
            h.client(true, T0, begin(10, spec(3, &cap))),
            err(ClientError::BadBlob)
        );
        // Nothing refused was written.
        assert_eq!(h.store_a.load().unwrap().blobs.len(), MAX_UPLOADS_PER_USER);
    }

    #[test]
    fn the_quota_counts_bytes_across_complete_uploads() {
        let mut h = Harness::new();
        h.a.config.limits.blob_quota = 3 * FULL as u64;
        let cap = Capability([9; 32]);
        let sp = BlobSpec {
            last_chunk_bytes: FULL as u32,
            ..spec(2, &cap)
        };
        for b in [1u8, 2] {
            let begun = h.client(
                true,
                T0,
                ClientOp::BlobBegin {
                    blob: BlobId([b; 16]),
                    spec: sp.clone(),
                },
            );
            let want_ok = b == 1;
            assert_eq!(
                matches!(begun[..], [ClientResponse::Blob(_)]),
                want_ok,
                "{begun:?}"
            );
        }
        assert_eq!(h.a.stats().blob_bytes, 2 * FULL as u64);
        // The node's budget for all users together binds too.
        h.a.config.limits.blob_quota = u64::MAX;
        h.a.config.limits.blob_total = 3 * FULL as u64;
        let begun = h.client(
            true,
            T0,
            ClientOp::BlobBegin {
                blob: BlobId([3; 16]),
                spec: sp,
            },
        );
        assert_eq!(begun, vec![ClientResponse::Error(ClientError::BlobQuota)]);
    }

    #[test]
    fn an_idle_upload_is_deleted_with_its_chunks() {
        let mut h = Harness::new();
        let cap = Capability([9; 32]);
        let sp = spec(2, &cap);
        let id = BlobId([4; 16]);
        h.client(
            true,
            T0,
            ClientOp::BlobBegin {
                blob: id,
                spec: sp.clone(),
            },
        );
        h.client(
            true,
            T0 + 10,
            ClientOp::BlobPut {
                blob: id,
                index: 0,
                chunk: chunk(&sp, 0),
            },
        );
        assert!(
            h.a.poll_timeout()
                .is_some_and(|t| t <= T0 + 10 + IDLE_UPLOAD_MS)
        );
        h.a.handle_timeout(T0 + 10 + IDLE_UPLOAD_MS);
        h.drain(true);
        assert_eq!(h.store_a.blob_chunk(&id, 0).unwrap(), None);
        assert!(h.store_a.load().unwrap().blobs.is_empty());
        let st = h.client(true, T0 + 11 + IDLE_UPLOAD_MS, ClientOp::BlobStatus(id));
        assert_eq!(st, vec![ClientResponse::Error(ClientError::NoSuchBlob)]);
        assert_eq!(h.a.stats().blobs, 0);
    }

    #[test]
    fn a_remote_nodes_answer_bigger_than_a_chunk_is_not_passed_on() {
        let mut h = Harness::new();
        let get = ClientOp::BlobGet {
            node: "NodeA".into(),
            blob: BlobId([1; 16]),
            index: 0,
            cap: Capability([1; 32]),
        };
        let (reqs, _) = bob(&mut h, T0, get);
        let (batch, _) = reqs.into_iter().next().unwrap();
        h.b.handle_fed_response(T0, batch, Ok(FedResponse::Chunk(vec![0; FULL + 1])));
        assert_eq!(
            h.drain(false).2,
            vec![ClientResponse::Error(ClientError::NodeUnreachable)]
        );
    }
}
