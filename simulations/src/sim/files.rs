//! Files in the model, as `hestia send --file` and `hestia file get` move them: the sender's
//! device begins an upload on its home node, sends the sealed chunks a few at a time over its
//! own link, and announces the file to the recipient in a message once every chunk is stored;
//! the recipient's device fetches the chunks through its own home node (which fetches them
//! from the holding node across the federation, so the holder never learns which device asked)
//! and tells the holder it is done, which deletes the chunks. Transfers survive dropped
//! connections and restarted nodes the way the device library's do: the upload resumes from
//! what the node says it holds, the download from the chunks it has.
//!
//! Chunk bytes are filler of their sealed length, and the nodes' stores keep only their
//! lengths ([`MemNodeStore::without_chunk_bytes`]): what is measured is time, bytes moved and
//! bytes held, not the crypto.

use super::*;
use hestia_protocol::file::{
    BlobId, Capability, FileCipher, FileKey, FileRef, NONCE_PREFIX_BYTES, cap_hash,
};
use hestia_protocol::wire::BlobSpec;

/// Chunk uploads, and chunk fetches, a device has outstanding at once: as the device library.
const UP_WINDOW: u32 = hestia_node::client::files::CHUNKS_IN_FLIGHT as u32;
const DOWN_WINDOW: u32 = hestia_node::client::files::FETCHES_IN_FLIGHT as u32;
/// A transfer that failed for a passing reason (a node unreachable or down, a federation
/// request timed out) tries again after this.
pub(super) const FILE_RETRY_MS: Millis = 5_000;
/// The largest file the model draws: 2 GiB, about what a node takes by default.
const MAX_DRAWN_BYTES: f64 = (2u64 << 30) as f64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FileState {
    /// The sender's device is uploading.
    Uploading,
    /// Uploaded; the message that announces it is on its way.
    Announced,
    /// The recipient's device is fetching it.
    Downloading,
    /// The recipient's device has all of it.
    Fetched,
    /// Past its expiry (or gone from its holder) before the recipient had it.
    Expired,
    /// Refused by the sender's node (too large, over quota).
    Refused,
}

pub(super) struct File {
    pub(super) from: usize,
    pub(super) to: usize,
    /// The node holding the chunks: the sender's home node.
    pub(super) holder: usize,
    blob: BlobId,
    cap: Capability,
    pub(super) spec: BlobSpec,
    pub(super) size: u64,
    pub(super) begun_at: Millis,
    pub(super) uploaded_at: Option<Millis>,
    pub(super) fetched_at: Option<Millis>,
    pub(super) state: FileState,
    /// Chunks still to send (uploading) or fetch (downloading), the next one last.
    todo: Vec<u32>,
    /// Chunks the recipient's device has (downloading).
    have: Vec<bool>,
    got: u32,
    /// Requests out in the current generation; a reset (the connection or the node went away)
    /// starts a new generation, and answers to an older one are ignored.
    out: u32,
    generation: u32,
    retry_due: bool,
}

pub(super) struct Files {
    /// The files this shard's devices upload, download or have done with, by number.
    pub(super) list: IdMap<File>,
    /// How many files this shard's users began.
    made: usize,
    /// Of each file this shard's nodes hold: the uploader and the sealed size (what the holding
    /// node's operator sees of it).
    held: FxMap<BlobId, (usize, u64)>,
    /// Uploads and downloads going on (announced files are counted as messages).
    pub(super) active: usize,
    /// Chunk bytes devices sent to their nodes, nodes sent each other, and nodes sent devices.
    pub(super) bytes_up: u64,
    pub(super) bytes_fed: u64,
    pub(super) bytes_down: u64,
    /// Sealed-sender bytes of the message that announces a file (measured from the real
    /// types: a file reference with a 23-character name and no caption).
    note_sealed: usize,
}

impl Files {
    pub(super) fn new() -> Files {
        let reference = FileRef {
            name: "IMG_20261203_101500.jpg".into(),
            mime: "image/jpeg".into(),
            caption: String::new(),
            size: 1 << 20,
            digest: [0; 32],
            cipher: FileCipher {
                key: FileKey([0; 32]),
                nonce_prefix: [0; NONCE_PREFIX_BYTES],
                chunks: 4,
            },
            node: "N".repeat(52),
            blob: BlobId([0; 16]),
            cap: Capability([0; 32]),
            expires_at: EPOCH_MS,
        };
        Files {
            list: IdMap::default(),
            made: 0,
            held: FxMap::default(),
            active: 0,
            bytes_up: 0,
            bytes_fed: 0,
            bytes_down: 0,
            note_sealed: sealed_len(hestia_protocol::envelope::Content::File(Box::new(
                reference,
            ))),
        }
    }

    /// File `f`, if an answer of request generation `generation` still counts for it in
    /// `state`; that request is then no longer out.
    fn answered(&mut self, f: usize, generation: u32, state: FileState) -> Option<&mut File> {
        // A file that went with its announcement to another shard answers nothing here.
        let file = self.list.0.get_mut(&f)?;
        if file.generation != generation || file.state != state {
            return None;
        }
        file.out -= 1;
        Some(file)
    }
}

impl Shard {
    /// Time to a user's next file, if the scenario has files.
    pub(super) fn file_gap(&mut self) -> Option<Millis> {
        let rate = self.sc.files_per_user_per_hour;
        (rate > 0.0).then(|| exp_from(&mut self.files_rng, 3_600_000.0 / rate))
    }

    /// A size from the scenario's log-normal distribution (Box–Muller), 1 byte to 2 GiB.
    fn file_size(&mut self) -> u64 {
        let u1: f64 = self.files_rng.random::<f64>().max(1e-12);
        let u2: f64 = self.files_rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let size = self.sc.file_median_bytes * (self.sc.file_size_sigma * z).exp();
        size.clamp(1.0, MAX_DRAWN_BYTES) as u64
    }

    pub(super) fn compose_file(&mut self, u: usize) {
        if let Some(next) = self.file_gap()
            && self.now + next <= EPOCH_MS + ms(self.sc.duration_s)
        {
            self.schedule(self.now + next, Ev::ComposeFile(u));
        }
        // Drawn whether or not it is sent, so the stream does not depend on who is online.
        let size = self.file_size();
        let to = pick(
            &self.w.recipient_weights,
            self.w.homes.len(),
            u,
            &mut self.files_rng,
        );
        let home = self.devices[u].node;
        if !self.devices[u].online || self.nodes[home].core.is_none() || to == u {
            return;
        }
        let (mut blob, mut cap) = ([0u8; 16], [0u8; 32]);
        self.rng.fill_bytes(&mut blob);
        self.rng.fill_bytes(&mut cap);
        let cap = Capability(cap);
        let expires_at = self.now + ms(self.sc.file_ttl_s);
        let spec = BlobSpec::of_file(size, cap_hash(&cap), expires_at);
        let f = self.number(self.files.made);
        self.files.made += 1;
        self.files
            .held
            .insert(BlobId(blob), (u, spec.total_bytes()));
        self.files.list.0.insert(
            f,
            File {
                from: u,
                to,
                holder: home,
                blob: BlobId(blob),
                cap,
                spec,
                size,
                begun_at: self.now,
                uploaded_at: None,
                fetched_at: None,
                state: FileState::Uploading,
                todo: Vec::new(),
                have: Vec::new(),
                got: 0,
                out: 0,
                generation: 0,
                retry_due: false,
            },
        );
        self.files.active += 1;
        self.devices[u].files.push(f);
        self.begin_upload(f);
    }

    /// Asks the sender's node to begin (or, the same again, to resume) the upload; its answer
    /// says which chunks it holds.
    fn begin_upload(&mut self, f: usize) {
        let file = &self.files.list[f];
        let u = file.from;
        if !self.can_transfer(u) {
            return;
        }
        let op = ClientOp::BlobBegin {
            blob: file.blob,
            spec: file.spec.clone(),
        };
        let kind = Kind::BlobBegin(f, file.generation);
        self.files.list[f].out = 1;
        self.client_request(u, kind, op);
    }

    fn can_transfer(&self, u: usize) -> bool {
        self.connected(u) && self.nodes[self.devices[u].node].core.is_some()
    }

    /// Sends what the window allows.
    fn pump(&mut self, f: usize) {
        let state = self.files.list[f].state;
        let (u, window) = match state {
            FileState::Uploading => (self.files.list[f].from, UP_WINDOW),
            FileState::Downloading => (self.files.list[f].to, DOWN_WINDOW),
            _ => return,
        };
        while self.files.list[f].out < window && self.can_transfer(u) {
            let file = &mut self.files.list[f];
            let Some(index) = file.todo.pop() else {
                break;
            };
            file.out += 1;
            let generation = file.generation;
            let (blob, cap) = (file.blob, file.cap.clone());
            let len = file.spec.chunk_len(index).unwrap_or(0) as usize;
            if state == FileState::Uploading {
                let op = ClientOp::BlobPut {
                    blob,
                    index,
                    chunk: vec![0; len],
                };
                self.client_request(u, Kind::BlobPut(f, index, generation), op);
            } else {
                let op = ClientOp::BlobGet {
                    node: self.w.node_ids[file.holder].clone(),
                    blob,
                    index,
                    cap,
                };
                self.client_request(u, Kind::BlobGet(f, index, generation), op);
            }
        }
    }

    /// A device takes up its transfers: `reset` when what it had in flight was lost (its
    /// connection dropped, or its node restarted).
    pub(super) fn resume_files(&mut self, u: usize, reset: bool) {
        for f in self.devices[u].files.clone() {
            let file = &mut self.files.list[f];
            if reset {
                file.generation += 1;
                file.out = 0;
                match file.state {
                    FileState::Uploading => {
                        file.todo.clear();
                        self.begin_upload(f);
                        continue;
                    }
                    FileState::Downloading => {
                        file.todo = (0..file.spec.chunks)
                            .rev()
                            .filter(|i| !file.have[*i as usize])
                            .collect();
                    }
                    _ => {}
                }
            }
            let file = &self.files.list[f];
            if file.state == FileState::Uploading && file.out == 0 && file.todo.is_empty() {
                // Never heard what the node holds (the begin was lost): ask again.
                self.begin_upload(f);
            } else {
                self.pump(f);
            }
        }
    }

    /// Tries again after a passing failure, once per wait.
    fn retry_later(&mut self, f: usize) {
        if !self.files.list[f].retry_due {
            self.files.list[f].retry_due = true;
            self.schedule(self.now + FILE_RETRY_MS, Ev::FileRetry(f));
        }
    }

    pub(super) fn file_retry(&mut self, f: usize) {
        let Some(file) = self.files.list.0.get_mut(&f) else {
            return; // gone with its announcement to the recipient's shard
        };
        file.retry_due = false;
        let file = &self.files.list[f];
        if file.state == FileState::Uploading && file.out == 0 && file.todo.is_empty() {
            self.begin_upload(f);
        } else {
            self.pump(f);
        }
    }

    /// Ends a transfer: off its device's list and out of the active count.
    fn settle(&mut self, f: usize, state: FileState) {
        let file = &mut self.files.list[f];
        let u = match file.state {
            FileState::Uploading => file.from,
            _ => file.to,
        };
        file.state = state;
        file.todo = Vec::new();
        file.have = Vec::new();
        self.files.active -= 1;
        self.devices[u].files.retain(|x| *x != f);
    }

    pub(super) fn file_begun(&mut self, f: usize, generation: u32, resp: ClientResponse) {
        let Some(file) = self.files.list.0.get_mut(&f) else {
            return; // gone with its announcement to the recipient's shard
        };
        if file.generation != generation || file.state != FileState::Uploading {
            return;
        }
        file.out = 0;
        match resp {
            ClientResponse::Blob(state) => {
                let held = |i: u32| {
                    state
                        .held
                        .get(i as usize / 8)
                        .is_some_and(|b| b & (1 << (i % 8)) != 0)
                };
                file.todo = (0..file.spec.chunks).rev().filter(|i| !held(*i)).collect();
                if file.todo.is_empty() {
                    self.uploaded(f);
                } else {
                    self.pump(f);
                }
            }
            ClientResponse::Error(ClientError::BlobTooLarge { .. } | ClientError::BlobQuota) => {
                self.settle(f, FileState::Refused)
            }
            _ => self.retry_later(f),
        }
    }

    pub(super) fn chunk_stored(
        &mut self,
        f: usize,
        index: u32,
        generation: u32,
        resp: ClientResponse,
    ) {
        let Some(file) = self.files.answered(f, generation, FileState::Uploading) else {
            return;
        };
        match resp {
            ClientResponse::ChunkStored { held } if held == file.spec.chunks => self.uploaded(f),
            ClientResponse::ChunkStored { .. } => self.pump(f),
            _ => {
                // Not stored (the node lost the upload, or refused for now): ask anew.
                file.todo.push(index);
                if file.out == 0 {
                    file.todo.clear();
                    file.generation += 1;
                }
                self.retry_later(f);
            }
        }
    }

    /// Every chunk is stored: the sender's device announces the file to the recipient.
    fn uploaded(&mut self, f: usize) {
        let (u, to) = (self.files.list[f].from, self.files.list[f].to);
        self.files.list[f].uploaded_at = Some(self.now);
        self.settle(f, FileState::Announced);
        let sealed = self.files.note_sealed;
        let envelope = self.envelope_sealing(to, sealed);
        self.post(u, to, Carries::File(f), envelope);
    }

    /// The recipient's device has the announcement: it starts fetching, unless it is too late.
    pub(super) fn file_announced(&mut self, u: usize, f: usize) {
        let Some(file) = self.files.list.0.get_mut(&f) else {
            return;
        };
        if file.state != FileState::Announced || file.to != u {
            return;
        }
        if self.now >= file.spec.expires_at {
            file.state = FileState::Expired;
            return;
        }
        file.state = FileState::Downloading;
        file.todo = (0..file.spec.chunks).rev().collect();
        file.have = vec![false; file.spec.chunks as usize];
        self.files.active += 1;
        self.devices[u].files.push(f);
        self.pump(f);
    }

    pub(super) fn chunk_got(
        &mut self,
        f: usize,
        index: u32,
        generation: u32,
        resp: ClientResponse,
    ) {
        let Some(file) = self.files.answered(f, generation, FileState::Downloading) else {
            return;
        };
        match resp {
            ClientResponse::Chunk(_) => {
                if !file.have[index as usize] {
                    file.have[index as usize] = true;
                    file.got += 1;
                }
                if file.got < file.spec.chunks {
                    return self.pump(f);
                }
                file.fetched_at = Some(self.now);
                let (u, op) = (
                    file.to,
                    ClientOp::BlobDone {
                        node: self.w.node_ids[file.holder].clone(),
                        blob: file.blob,
                        cap: file.cap.clone(),
                    },
                );
                self.settle(f, FileState::Fetched);
                self.client_request(u, Kind::BlobDone, op);
            }
            // Expired, or gone with the holder's disk: the file cannot be had any more.
            ClientResponse::Error(ClientError::NoSuchBlob) => self.settle(f, FileState::Expired),
            _ => {
                file.todo.push(index);
                self.retry_later(f);
            }
        }
    }

    /// The holding node `n` serves its own user `u` a chunk: its operator links uploader and
    /// recipient outright.
    pub(super) fn fetched_locally(&mut self, n: usize, u: usize, blob: &BlobId) {
        if let Some(&(from, bytes)) = self.files.held.get(blob) {
            let seen = &mut self.nodes[n].observed;
            seen.file_local_fetchers.insert((from, u));
            seen.blob_sizes.insert(bytes);
        }
    }

    /// The holding node `holder` answers a chunk request from node `from`: what its operator
    /// learns is which node fetched which of its users' files, and the sealed size.
    pub(super) fn fetched_by_node(&mut self, holder: usize, from: usize, blob: &BlobId) {
        if let Some(&(uploader, bytes)) = self.files.held.get(blob) {
            let seen = &mut self.nodes[holder].observed;
            seen.file_fetching_nodes.insert((uploader, from));
            seen.blob_sizes.insert(bytes);
        }
    }
}
