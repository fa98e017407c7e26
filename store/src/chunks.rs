//! Where a node keeps file chunks (schema 6): one plain file per blob in a directory beside the
//! database (`<db>.chunks/<blob id in hex>`), chunk `i` at offset `i × SEALED_CHUNK_BYTES`.
//!
//! Why files and not RocksDB: measured in `hestia bench --only files` (docs/benchmarks.md),
//! a chunk written once to its file and `fdatasync`ed, then its record synced in RocksDB, moved
//! 1.2-1.45 times the bytes per second of the same chunk and record in one batch with the chunk
//! in a BlobDB column family, which writes every chunk twice (to the write-ahead log, then to a
//! blob file when the memtable flushes) and checksums it in software both times.
//!
//! Crash consistency without one atomic batch: a chunk's bytes are durable in its file
//! *before* the batch holding the blob's record (whose chunk map says the chunk is held) is
//! written, so a record never claims bytes that are not on disk. A crash between the two
//! leaves bytes the record does not count; the uploader sends that chunk again and it is
//! written over. Deleting is the other way round: the record changes first, the file goes
//! after, and a file left by a crash in between is removed at the next open
//! ([`ChunkFiles::collect_garbage`]).

use crate::{Result, StoreError};
use hestia_protocol::file::{BlobId, SEALED_CHUNK_BYTES};
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub(crate) struct ChunkFiles {
    dir: PathBuf,
}

fn hex(blob: &BlobId) -> String {
    blob.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(name: &str) -> Option<BlobId> {
    if name.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(BlobId(id))
}

fn offset(index: u32) -> u64 {
    u64::from(index) * u64::from(SEALED_CHUNK_BYTES)
}

impl ChunkFiles {
    /// The chunk directory of the database at `db` (created, owner only, unless `read_only`).
    pub(crate) fn beside(db: &Path, read_only: bool) -> Result<ChunkFiles> {
        let mut name = db
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "db".into());
        name.push(".chunks");
        let dir = db.with_file_name(name);
        if !read_only {
            crate::secure_dir(&dir)?;
        }
        Ok(ChunkFiles { dir })
    }

    fn path(&self, blob: &BlobId) -> PathBuf {
        self.dir.join(hex(blob))
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    }

    /// Writes these chunks and makes them durable (file data, and the directory entry of a
    /// file made here) before returning.
    pub(crate) fn write(&self, chunks: &[(&BlobId, u32, &[u8])]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut open: HashMap<BlobId, std::fs::File> = HashMap::new();
        let mut created = false;
        for (blob, index, bytes) in chunks {
            let path = self.path(blob);
            if !open.contains_key(*blob) {
                created |= !path.exists();
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(self.io(&path))?;
                open.insert(**blob, f);
            }
            let f = &open[*blob];
            f.write_all_at(bytes, offset(*index))
                .map_err(self.io(&path))?;
        }
        for (blob, f) in &open {
            f.sync_data().map_err(self.io(&self.path(blob)))?;
        }
        if created {
            let d = std::fs::File::open(&self.dir).map_err(self.io(&self.dir))?;
            d.sync_all().map_err(self.io(&self.dir))?;
        }
        Ok(())
    }

    /// Chunk `index` of `blob`, `len` bytes, if the file holds them.
    pub(crate) fn read(&self, blob: &BlobId, index: u32, len: u32) -> Result<Option<Vec<u8>>> {
        let path = self.path(blob);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path)(e)),
        };
        let end = offset(index) + u64::from(len);
        if f.metadata().map_err(self.io(&path))?.len() < end {
            return Ok(None);
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset(index))
            .map_err(self.io(&path))?;
        Ok(Some(buf))
    }

    /// Removes a blob's file (its record no longer counts any chunk).
    pub(crate) fn delete(&self, blob: &BlobId) -> Result<()> {
        let path = self.path(blob);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&path)(e)),
        }
    }

    /// Every blob with a file, and the file's length.
    pub(crate) fn list(&self) -> Result<Vec<(Option<BlobId>, PathBuf, u64)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.io(&self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(self.io(&self.dir))?;
            let path = entry.path();
            let len = entry.metadata().map_err(self.io(&path))?.len();
            let blob = entry.file_name().to_str().and_then(parse_hex);
            out.push((blob, path, len));
        }
        Ok(out)
    }

    /// Removes files no record counts chunks in (`keep` says which blobs still hold chunks):
    /// what a crash between a deletion's record and its file leaves.
    pub(crate) fn collect_garbage(&self, keep: impl Fn(&BlobId) -> bool) -> Result<usize> {
        let mut removed = 0;
        for (blob, path, _) in self.list()? {
            if blob.as_ref().is_some_and(&keep) {
                continue;
            }
            std::fs::remove_file(&path).map_err(self.io(&path))?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_written_at_their_offsets_read_back_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let files = ChunkFiles::beside(&tmp.path().join("db"), false).unwrap();
        let (a, b) = (BlobId([1; 16]), BlobId([0xab; 16]));
        let full = vec![5u8; SEALED_CHUNK_BYTES as usize];
        files
            .write(&[
                (&a, 1, &[7u8; 100][..]),
                (&a, 0, &full),
                (&b, 0, &[9u8; 30][..]),
            ])
            .unwrap();
        assert!(tmp.path().join("db.chunks").join(hex(&b)).exists());
        assert_eq!(files.read(&a, 1, 100).unwrap(), Some(vec![7; 100]));
        assert_eq!(files.read(&a, 0, SEALED_CHUNK_BYTES).unwrap(), Some(full));
        assert_eq!(files.read(&a, 2, 10).unwrap(), None, "past the end");
        assert_eq!(parse_hex(&hex(&b)), Some(b));
        assert_eq!(parse_hex("not-a-blob"), None);
        std::fs::write(tmp.path().join("db.chunks").join("stray"), b"x").unwrap();
        assert_eq!(files.collect_garbage(|id| *id == b).unwrap(), 2);
        assert_eq!(files.read(&a, 1, 100).unwrap(), None);
        assert_eq!(files.read(&b, 0, 30).unwrap(), Some(vec![9; 30]));
        files.delete(&b).unwrap();
        files.delete(&b).unwrap();
        assert!(files.list().unwrap().is_empty());
    }
}
