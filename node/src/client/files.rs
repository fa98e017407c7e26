//! Files on the device: sealed chunk by chunk (`hestia_protocol::file`) and uploaded to the
//! home node, resumable; announced to the contact in a message once every chunk is stored;
//! downloaded through the recipient's own home node, opened, verified and put in place,
//! resumable too. A file is never held whole in memory: one chunk at a time.

use super::{ClientLibError, Connection, Device, unexpected};
use crate::driver::now_millis;
use hestia_protocol::envelope::{Content, DEFAULT_TTL_MS, EnvelopeId};
use hestia_protocol::file::{
    BlobId, CHUNK_BYTES, Capability, FileCipher, FileDigest, FileError, FileRef, MAX_FILE_BYTES,
    cap_hash, chunk_file_len, chunk_plain_len, valid_file_name,
};
use hestia_protocol::wire::{
    BlobPhase, BlobSpec, BlobState, ClientError, ClientOp, ClientResponse,
};
use hestia_store::client::{
    ClientWrite, Direction, FileState, StoredFile, StoredMessage, StoredUpload,
};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The suffix of the temporary file a download is written to beside its destination.
pub const PART_SUFFIX: &str = ".hestia-part";

/// Chunks in flight at once in each direction: keeps the link and the node's disk busy while
/// holding at most this many chunks (1 MiB) in memory.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// Chunk fetches in flight at once: more than uploads, because each crosses two nodes (the
/// recipient's fetches from the sender's), so an answer takes twice the hops (2 MiB held).
pub const FETCHES_IN_FLIGHT: usize = 8;
/// A download syncs its temporary file and records its progress once per this many chunks
/// (1 MiB): what a resume after a crash may fetch again. 16 moved nothing measurable.
pub const SYNC_EVERY_CHUNKS: usize = 4;

/// Called as a transfer goes: bytes of the file done so far, and in all.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientLibError + '_ {
    move |source| ClientLibError::FileIo {
        path: path.to_path_buf(),
        source,
    }
}

/// A name the recipient can save the file under: the path's last part, with anything
/// `valid_file_name` refuses replaced.
pub fn file_name_of(path: &Path) -> String {
    let raw = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_control() || "/\\".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    while name.starts_with('.') {
        name.remove(0);
    }
    let mut end = name.len().min(hestia_protocol::file::MAX_FILE_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    if valid_file_name(&name) {
        name
    } else {
        "file".into()
    }
}

/// A MIME type from the name's extension, for the recipient's display only.
pub fn mime_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mov") => "video/quicktime",
        Some("mp3") => "audio/mpeg",
        Some("ogg" | "opus") => "audio/ogg",
        Some("wav") => "audio/wav",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("txt" | "md") => "text/plain",
        _ => "application/octet-stream",
    }
}

fn modified_ms(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads plaintext chunk `index` of `file` (size `size`): its bytes, then zero padding.
fn read_chunk(file: &mut std::fs::File, size: u64, index: u32) -> std::io::Result<Vec<u8>> {
    let start = u64::from(index) * u64::from(CHUNK_BYTES);
    let mut plain = vec![0u8; chunk_plain_len(size, index) as usize];
    let have = chunk_file_len(size, index) as usize;
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut plain[..have])?;
    Ok(plain)
}

impl Device {
    /// Encrypts the file at `path` and uploads it to the home node, then sends `contact` the
    /// message that points to it (with `caption` as its text). Resumable: the same file to the
    /// same contact with the same caption continues the upload from the chunks the node has.
    pub async fn send_file(
        &mut self,
        conn: &mut Connection,
        contact: &str,
        path: &Path,
        caption: &str,
        progress: Progress<'_>,
    ) -> Result<StoredMessage, ClientLibError> {
        let c = self.contact(contact)?;
        let path = std::fs::canonicalize(path).map_err(io_err(path))?;
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        if !meta.is_file() {
            return Err(ClientLibError::FileIo {
                path,
                source: std::io::Error::other("not a regular file"),
            });
        }
        let size = meta.len();
        if size > MAX_FILE_BYTES {
            return Err(ClientLibError::File(FileError::TooLarge(size)));
        }
        if caption.len() > hestia_protocol::file::MAX_CAPTION_BYTES {
            return Err(ClientLibError::File(FileError::CaptionTooLong(
                caption.len(),
            )));
        }
        let path_text = path.to_string_lossy().into_owned();
        let modified = modified_ms(&meta);
        let now = now_millis();
        let (same, stale): (Vec<_>, Vec<_>) = self
            .db
            .uploads()?
            .into_iter()
            .filter(|u| u.path == path_text && u.contact == c.name)
            .partition(|u| {
                u.modified_ms == modified
                    && u.file.size == size
                    && u.file.caption == caption
                    && u.file.expires_at > now
            });
        // An earlier upload of this path to this contact that can no longer be resumed (the
        // file or caption changed, or it expired) is forgotten; its node deletes it when idle.
        if !stale.is_empty() {
            let forget: Vec<ClientWrite> = stale
                .iter()
                .map(|u| ClientWrite::Upload(u.file.blob, None))
                .collect();
            self.db.commit(&forget)?;
        }
        let upload = match same.into_iter().next() {
            Some(u) => u,
            None => self.begin_upload(&c.name, &path, modified, size, caption)?,
        };
        self.continue_upload(conn, &c, upload, progress).await
    }

    /// Uploads begun and interrupted (a crash, Ctrl-C, the node going away) are continued by
    /// any later command that talks to the home node: this goes on with each from the chunks
    /// the node holds, and sends its message when it is whole. An upload whose file changed or
    /// went away, or whose contact was removed, is forgotten. The messages sent.
    pub async fn resume_uploads(
        &mut self,
        conn: &mut Connection,
        progress: Progress<'_>,
    ) -> Result<Vec<StoredMessage>, ClientLibError> {
        let mut sent = Vec::new();
        for upload in self.db.uploads()? {
            let unchanged = std::fs::metadata(&upload.path).is_ok_and(|m| {
                m.is_file() && m.len() == upload.file.size && modified_ms(&m) == upload.modified_ms
            });
            let contact = self.contact(&upload.contact);
            let (true, Ok(c)) = (unchanged && upload.file.expires_at > now_millis(), contact)
            else {
                self.db
                    .commit(&[ClientWrite::Upload(upload.file.blob, None)])?;
                continue;
            };
            sent.push(self.continue_upload(conn, &c, upload, progress).await?);
        }
        Ok(sent)
    }

    /// Sends the chunks of `upload` the node does not hold yet, then the message.
    async fn continue_upload(
        &mut self,
        conn: &mut Connection,
        c: &hestia_store::client::Contact,
        upload: StoredUpload,
        progress: Progress<'_>,
    ) -> Result<StoredMessage, ClientLibError> {
        let path = PathBuf::from(&upload.path);
        let size = upload.file.size;
        let modified = upload.modified_ms;
        let caption = upload.file.caption.clone();
        let f = upload.file.clone();
        let spec = BlobSpec::of_file(size, cap_hash(&f.cap), f.expires_at);
        let op = ClientOp::BlobBegin { blob: f.blob, spec };
        let state = match conn.call(&self.key, op).await {
            Ok(ClientResponse::Blob(s)) => s,
            Ok(other) => return Err(unexpected(other)),
            // Refusals that a retry cannot cure: nothing is left to resume.
            Err(
                e
                @ ClientLibError::Refused(ClientError::BlobTooLarge { .. } | ClientError::BadBlob),
            ) => {
                self.db.commit(&[ClientWrite::Upload(f.blob, None)])?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let mut done: u64 = (0..f.cipher.chunks)
            .filter(|i| state.is_held(*i))
            .map(|i| chunk_file_len(size, i))
            .sum();
        progress(done, size);
        // One pass over the file: every chunk is read and hashed (the digest goes in the
        // message, after the upload), and those the node does not hold are sealed and sent,
        // up to CHUNKS_IN_FLIGHT at once: the next leaves as soon as the oldest is stored, so
        // sealing here overlaps the node's synced writes.
        let mut file = std::fs::File::open(&path).map_err(io_err(&path))?;
        let mut digest = FileDigest::default();
        let mut sent: std::collections::VecDeque<u32> = Default::default();
        let key = &self.key;
        let mut stored = async |conn: &mut Connection, index: u32| -> Result<(), ClientLibError> {
            match conn.next_answer(key).await {
                Some(Ok(ClientResponse::ChunkStored { .. })) => {}
                Some(Ok(other)) => return Err(unexpected(other)),
                Some(Err(e)) => return Err(e),
                None => return Err(ClientLibError::Unexpected("no answer".into())),
            }
            done += chunk_file_len(size, index);
            progress(done, size);
            Ok(())
        };
        for i in 0..f.cipher.chunks {
            let plain = read_chunk(&mut file, size, i).map_err(io_err(&path))?;
            digest.update(&plain[..chunk_file_len(size, i) as usize]);
            if state.phase == BlobPhase::Uploading && !state.is_held(i) {
                let chunk = f.cipher.seal(i, &plain).map_err(ClientLibError::File)?;
                if sent.len() == CHUNKS_IN_FLIGHT {
                    let oldest = sent.pop_front().expect("the window is full");
                    stored(conn, oldest).await?;
                }
                let op = ClientOp::BlobPut {
                    blob: f.blob,
                    index: i,
                    chunk,
                };
                conn.start(&self.key, op).await;
                sent.push_back(i);
            }
        }
        while let Some(oldest) = sent.pop_front() {
            stored(conn, oldest).await?;
        }
        let mut f = f;
        f.digest = digest.finish();
        // The chunks are what the file was when the upload began, or the digest is wrong.
        let after = std::fs::metadata(&path).map_err(io_err(&path))?;
        if after.len() != size || modified_ms(&after) != modified {
            self.db.commit(&[ClientWrite::Upload(f.blob, None)])?;
            return Err(ClientLibError::FileChanged(path));
        }
        let ttl = f.expires_at.saturating_sub(now_millis()).max(1);
        let extra = vec![
            ClientWrite::File(
                upload.envelope,
                StoredFile {
                    file: f.clone(),
                    direction: Direction::Outgoing,
                    state: FileState::Sent,
                },
            ),
            ClientWrite::Upload(f.blob, None),
        ];
        let content = Content::File(Box::new(f));
        self.send_content(conn, c, upload.envelope, &caption, content, ttl, extra)
            .await
    }

    /// Makes the file's key, blob id and capability, and stores the upload before any chunk
    /// leaves.
    fn begin_upload(
        &mut self,
        contact: &str,
        path: &Path,
        modified: u64,
        size: u64,
        caption: &str,
    ) -> Result<StoredUpload, ClientLibError> {
        let rng = &mut rand::rng();
        let cipher = FileCipher::generate(rng, size).map_err(ClientLibError::File)?;
        let mut blob = [0u8; 16];
        let mut cap = [0u8; 32];
        rand::Rng::fill_bytes(rng, &mut blob);
        rand::Rng::fill_bytes(rng, &mut cap);
        let name = file_name_of(path);
        let file = FileRef {
            mime: mime_of(&name).into(),
            name,
            caption: caption.into(),
            size,
            // Filled in by the upload's pass over the file, before the message is sent.
            digest: [0; 32],
            cipher,
            node: self.home_node.clone(),
            blob: BlobId(blob),
            cap: Capability(cap),
            expires_at: now_millis().saturating_add(DEFAULT_TTL_MS),
        };
        let upload = StoredUpload {
            contact: contact.into(),
            path: path.to_string_lossy().into_owned(),
            modified_ms: modified,
            envelope: EnvelopeId::random(rng),
            file,
        };
        self.db
            .commit(&[ClientWrite::Upload(upload.file.blob, Some(upload.clone()))])?;
        Ok(upload)
    }

    /// Files sent and received, newest last, by the id of the message that carries each.
    pub fn files(&self) -> Result<Vec<(EnvelopeId, StoredFile)>, ClientLibError> {
        let mut all = self.db.files()?;
        all.sort_by_key(|(_, f)| f.file.expires_at);
        Ok(all)
    }

    /// How many of an upload's chunks the home node holds, and of how many (none if it has
    /// forgotten the upload: idle too long).
    pub async fn upload_progress(
        &mut self,
        conn: &mut Connection,
        upload: &StoredUpload,
    ) -> Result<Option<(u32, u32)>, ClientLibError> {
        let state = self.blob_status(conn, upload.file.blob).await?;
        Ok(state.map(|s| (s.held_count(), s.chunks)))
    }

    /// What the home node holds of one of this user's blobs (none: nothing, any more).
    async fn blob_status(
        &mut self,
        conn: &mut Connection,
        blob: BlobId,
    ) -> Result<Option<BlobState>, ClientLibError> {
        match conn.call(&self.key, ClientOp::BlobStatus(blob)).await {
            Ok(ClientResponse::Blob(s)) => Ok(Some(s)),
            Ok(other) => Err(unexpected(other)),
            Err(ClientLibError::Refused(ClientError::NoSuchBlob)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads begun and not yet sent.
    pub fn uploads(&self) -> Result<Vec<StoredUpload>, ClientLibError> {
        Ok(self.db.uploads()?)
    }

    /// The file a message carries, if any.
    pub fn file(&self, id: &EnvelopeId) -> Result<Option<StoredFile>, ClientLibError> {
        Ok(self.db.file(id)?)
    }

    /// The file whose message id starts with `prefix` (hex).
    pub fn find_file(&self, prefix: &str) -> Result<(EnvelopeId, StoredFile), ClientLibError> {
        let prefix = prefix.to_ascii_lowercase();
        let mut hits = self
            .db
            .files()?
            .into_iter()
            .filter(|(id, _)| !prefix.is_empty() && id.to_hex().starts_with(&prefix));
        match (hits.next(), hits.next()) {
            (Some(hit), None) => Ok(hit),
            (Some(_), Some(_)) => Err(ClientLibError::AmbiguousFile(prefix)),
            (None, _) => Err(ClientLibError::NoSuchFile(prefix)),
        }
    }

    /// Asks the home node how the files this device sent stand: fetched by the recipient's
    /// device, or gone at their expiry. Returns the files whose state changed.
    pub async fn refresh_files(&mut self, conn: &mut Connection) -> Result<usize, ClientLibError> {
        let now = now_millis();
        let mut changed = 0;
        for (id, mut f) in self.db.files()? {
            if f.direction != Direction::Outgoing || f.state != FileState::Sent {
                continue;
            }
            let new = match self.blob_status(conn, f.file.blob).await? {
                Some(s) if s.phase == BlobPhase::Fetched => FileState::Fetched,
                None if f.file.expires_at <= now => FileState::Expired,
                _ => continue,
            };
            f.state = new;
            self.db.commit(&[ClientWrite::File(id, f)])?;
            changed += 1;
        }
        Ok(changed)
    }

    /// Downloads the file of message `id` through the home node, decrypting as it streams, into
    /// a temporary file beside `out` (default: its own name in the current directory), checks
    /// it against its digest and only then renames it into place. Resumable: the temporary file
    /// holds the chunks already verified. Returns where the file is.
    pub async fn fetch_file(
        &mut self,
        conn: &mut Connection,
        id: &EnvelopeId,
        out: Option<&Path>,
        progress: Progress<'_>,
    ) -> Result<PathBuf, ClientLibError> {
        let mut stored = self
            .db
            .file(id)?
            .filter(|f| f.direction == Direction::Incoming)
            .ok_or_else(|| ClientLibError::NoSuchFile(id.to_hex()))?;
        let f = stored.file.clone();
        match &stored.state {
            FileState::Downloaded { path } if Path::new(path).exists() => {
                return Ok(PathBuf::from(path));
            }
            FileState::Expired => return Err(ClientLibError::FileExpired),
            _ => {}
        }
        if f.expires_at <= now_millis() {
            self.set_file_state(id, &mut stored, FileState::Expired)?;
            return Err(ClientLibError::FileExpired);
        }
        let dest = match out {
            Some(p) if p.is_dir() => p.join(&f.name),
            Some(p) => p.to_path_buf(),
            None => PathBuf::from(&f.name),
        };
        if dest.exists() {
            return Err(ClientLibError::OutputExists(dest));
        }
        let mut part_name = dest.as_os_str().to_owned();
        part_name.push(PART_SUFFIX);
        let part = PathBuf::from(part_name);
        let part_text = part.to_string_lossy().into_owned();
        let mut done = match &stored.state {
            FileState::Downloading { part: p, done } if *p == part_text && part.exists() => *done,
            _ => 0,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .map_err(io_err(&part))?;
        // What was verified before: the first `done` chunks' bytes (anything past them is
        // from a write that was not recorded and is cut off).
        let chunk = u64::from(CHUNK_BYTES);
        let kept = (u64::from(done) * chunk).min(f.size);
        file.set_len(kept).map_err(io_err(&part))?;
        let mut digest = FileDigest::default();
        file.seek(SeekFrom::Start(0)).map_err(io_err(&part))?;
        let mut buf = vec![0u8; CHUNK_BYTES as usize];
        let mut left = kept;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            file.read_exact(&mut buf[..n]).map_err(io_err(&part))?;
            digest.update(&buf[..n]);
            left -= n as u64;
        }
        progress(kept, f.size);
        // Up to FETCHES_IN_FLIGHT requests out at once, the next leaving as each answer is
        // taken (answers come in order), so the nodes keep working while this device opens,
        // writes and syncs.
        let mut next = done;
        let mut unsynced = 0;
        while done < f.cipher.chunks {
            while next < f.cipher.chunks && conn.in_window() < FETCHES_IN_FLIGHT {
                let op = ClientOp::BlobGet {
                    node: f.node.clone(),
                    blob: f.blob,
                    index: next,
                    cap: f.cap.clone(),
                };
                conn.start(&self.key, op).await;
                next += 1;
            }
            {
                let answer = conn
                    .next_answer(&self.key)
                    .await
                    .expect("a request is in the window");
                let sealed = match answer {
                    Ok(ClientResponse::Chunk(c)) => c,
                    Ok(other) => return Err(unexpected(other)),
                    Err(ClientLibError::Refused(ClientError::NoSuchBlob)) => {
                        drop(file);
                        return self.abandon(
                            id,
                            &mut stored,
                            &part,
                            FileState::Expired,
                            ClientLibError::FileExpired,
                        );
                    }
                    Err(e) => return Err(e),
                };
                let plain = match f.cipher.open(done, &sealed) {
                    Ok(p) => p,
                    Err(e) => {
                        drop(file);
                        let err = ClientLibError::FileCorrupt(e);
                        return self.abandon(id, &mut stored, &part, FileState::Received, err);
                    }
                };
                let real = chunk_file_len(f.size, done) as usize;
                file.write_all(&plain[..real]).map_err(io_err(&part))?;
                digest.update(&plain[..real]);
                done += 1;
                unsynced += 1;
                progress((u64::from(done) * chunk).min(f.size), f.size);
            }
            if unsynced < SYNC_EVERY_CHUNKS && done < f.cipher.chunks {
                continue;
            }
            unsynced = 0;
            // On disk before they count as done, so a resume never trusts bytes that were lost
            // (it cuts the file back to what was counted).
            file.sync_data().map_err(io_err(&part))?;
            self.set_file_state(
                id,
                &mut stored,
                FileState::Downloading {
                    part: part_text.clone(),
                    done,
                },
            )?;
        }
        if digest.finish() != f.digest {
            drop(file);
            let err = ClientLibError::FileCorrupt(FileError::Digest);
            return self.abandon(id, &mut stored, &part, FileState::Received, err);
        }
        file.sync_all().map_err(io_err(&part))?;
        drop(file);
        std::fs::rename(&part, &dest).map_err(io_err(&dest))?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        let place = std::fs::canonicalize(&dest).unwrap_or(dest);
        self.set_file_state(
            id,
            &mut stored,
            FileState::Downloaded {
                path: place.to_string_lossy().into_owned(),
            },
        )?;
        // The holding node may delete it now; if this fails it goes at its expiry.
        let op = ClientOp::BlobDone {
            node: f.node.clone(),
            blob: f.blob,
            cap: f.cap.clone(),
        };
        if let Err(e) = conn.call(&self.key, op).await {
            tracing::debug!(error = %e, "could not tell the holding node the file was fetched");
        }
        Ok(place)
    }

    /// A download that cannot go on: its temporary file goes (nothing unverified stays), the
    /// file is recorded as `state`, and `err` is the answer.
    fn abandon(
        &mut self,
        id: &EnvelopeId,
        stored: &mut StoredFile,
        part: &Path,
        state: FileState,
        err: ClientLibError,
    ) -> Result<PathBuf, ClientLibError> {
        let _ = std::fs::remove_file(part);
        self.set_file_state(id, stored, state)?;
        Err(err)
    }

    fn set_file_state(
        &mut self,
        id: &EnvelopeId,
        stored: &mut StoredFile,
        state: FileState,
    ) -> Result<(), ClientLibError> {
        stored.state = state;
        self.db.commit(&[ClientWrite::File(*id, stored.clone())])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_gives_a_name_that_stays_in_the_download_folder() {
        assert_eq!(file_name_of(Path::new("/tmp/talk.mp4")), "talk.mp4");
        assert_eq!(file_name_of(Path::new("/tmp/.bashrc")), "bashrc");
        assert_eq!(file_name_of(Path::new("/tmp/a\u{1b}[2Jb")), "a_[2Jb");
        assert_eq!(file_name_of(Path::new("/")), "file");
        assert_eq!(file_name_of(Path::new("/x/...")), "file");
        assert_eq!(mime_of("Talk.MP4"), "video/mp4");
        assert_eq!(mime_of("noext"), "application/octet-stream");
    }
}
