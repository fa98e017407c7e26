//! Files, encrypted on the device before they leave it. A file is padded to a coarse size,
//! cut into fixed-size chunks and each chunk sealed on its own with a fresh per-file key
//! (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár, in the form of the
//! `aead-stream` crate's `StreamBE32` over XChaCha20-Poly1305):
//!
//! ```text
//! nonce(i)   = prefix (19 random bytes, per file) ‖ i (u32 big-endian) ‖ last (1 byte: 1 on the
//!              final chunk, 0 before it)
//! chunk(i)   = XChaCha20-Poly1305(key, nonce(i), plaintext[i·C .. (i+1)·C], aad = empty)
//! plaintext  = the file's bytes ‖ zero bytes up to padded_len(size)
//! ```
//!
//! A chunk carries its index and whether it is the last one inside its nonce, so reordered,
//! duplicated, dropped, truncated or extended streams fail to authenticate, and chunk `i`
//! decrypts alone (a download resumes at any chunk). The key, the prefix, the true size, a
//! SHA-256 of the file, its name, type and caption travel only in a [`FileRef`] inside the
//! end-to-end message. A node holding the chunks sees a blob of [`padded_len`] bytes in
//! [`CHUNK_BYTES`] pieces.

use crate::Millis;
use crate::display;
use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Plaintext bytes per chunk (the last may be shorter). 256 KiB: a chunk is one request of a
/// few hundred KiB, far below the 2 MiB frame limit, and a resume loses at most one.
pub const CHUNK_BYTES: u32 = 256 * 1024;
/// What a chunk adds: the Poly1305 tag.
pub const TAG_BYTES: usize = 16;
/// A sealed chunk of [`CHUNK_BYTES`] (every chunk but a file's last is this long).
pub const SEALED_CHUNK_BYTES: u32 = CHUNK_BYTES + TAG_BYTES as u32;
/// Bytes of the per-file nonce prefix.
pub const NONCE_PREFIX_BYTES: usize = 19;
/// Every file is padded to at least this many bytes, so small files look alike.
pub const MIN_PADDED_BYTES: u64 = 4096;
/// The largest file the format describes (a node sets its own, smaller, limit): 64 GiB.
pub const MAX_FILE_BYTES: u64 = 64 << 30;
/// Limits of the descriptive fields in a [`FileRef`].
pub const MAX_FILE_NAME_BYTES: usize = 255;
pub const MAX_MIME_BYTES: usize = 127;
pub const MAX_CAPTION_BYTES: usize = 4096;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("chunk {0} failed to authenticate: the file is damaged, truncated or not this one")]
    Chunk(u32),
    #[error("chunk {index} is out of range (the file has {chunks})")]
    ChunkOutOfRange { index: u32, chunks: u32 },
    #[error("the file's contents do not match its digest")]
    Digest,
    #[error("file of {0} bytes exceeds the limit of {MAX_FILE_BYTES}")]
    TooLarge(u64),
    #[error("file name is empty, longer than {MAX_FILE_NAME_BYTES} bytes, or names a directory")]
    BadName,
    #[error("file type is not a short MIME type")]
    BadMime,
    #[error("caption of {0} bytes exceeds the limit of {MAX_CAPTION_BYTES}")]
    CaptionTooLong(usize),
    #[error("the file's chunk size or chunk count does not match its size")]
    BadLayout,
    #[error("the file's holding node is not a node id")]
    BadNode,
}

/// A file's secret key: fresh and random per file. Zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct FileKey(pub [u8; 32]);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(…)")
    }
}

/// A blob's id on the node that holds it: random, chosen by the uploading device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 16]);

/// The secret that lets its holder fetch (and, done, delete) a blob. The uploading device makes
/// it and gives the node only its SHA-256 ([`cap_hash`]), so the node's disk cannot serve it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Capability(pub [u8; 32]);

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Capability(…)")
    }
}

/// What a node stores to check a [`Capability`].
pub fn cap_hash(cap: &Capability) -> [u8; 32] {
    Sha256::digest(cap.0).into()
}

/// The padded length of a file of `size` bytes: Padmé (Nikitin et al., "Reducing metadata
/// leakage from encrypted files and communication with PURBs", 2019), at least
/// [`MIN_PADDED_BYTES`]. A node learns O(log log size) bits of the size; the padding costs at
/// most 12%.
pub fn padded_len(size: u64) -> u64 {
    let size = size.max(MIN_PADDED_BYTES);
    let e = 63 - size.leading_zeros() as u64; // floor(log2 size), size ≥ 2
    let s = 64 - e.leading_zeros() as u64; // floor(log2 e) + 1
    let mask = (1u64 << (e - s)) - 1;
    size.saturating_add(mask) & !mask
}

/// The number of chunks of a file of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    padded_len(size).div_ceil(u64::from(CHUNK_BYTES))
}

/// Bytes of plaintext in chunk `index` of a file of `size` bytes (padding included).
pub fn chunk_plain_len(size: u64, index: u32) -> u64 {
    let padded = padded_len(size);
    let start = u64::from(index) * u64::from(CHUNK_BYTES);
    padded.saturating_sub(start).min(u64::from(CHUNK_BYTES))
}

/// Bytes of the file itself (padding not included) in chunk `index` of a file of `size` bytes.
pub fn chunk_file_len(size: u64, index: u32) -> u64 {
    let start = u64::from(index) * u64::from(CHUNK_BYTES);
    size.saturating_sub(start).min(u64::from(CHUNK_BYTES))
}

/// The parameters that seal and open every chunk of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCipher {
    pub key: FileKey,
    pub nonce_prefix: [u8; NONCE_PREFIX_BYTES],
    /// The number of chunks: the last one is sealed as last.
    pub chunks: u32,
}

impl FileCipher {
    /// A fresh key and prefix for a file of `size` bytes.
    pub fn generate(rng: &mut impl CryptoRng, size: u64) -> Result<FileCipher, FileError> {
        if size > MAX_FILE_BYTES {
            return Err(FileError::TooLarge(size));
        }
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_BYTES];
        rng.fill_bytes(&mut nonce_prefix);
        Ok(FileCipher {
            key: FileKey(key),
            nonce_prefix,
            chunks: chunk_count(size) as u32,
        })
    }

    fn nonce(&self, index: u32) -> XNonce {
        let mut n = [0u8; 24];
        n[..NONCE_PREFIX_BYTES].copy_from_slice(&self.nonce_prefix);
        n[NONCE_PREFIX_BYTES..23].copy_from_slice(&index.to_be_bytes());
        n[23] = u8::from(index + 1 == self.chunks);
        XNonce::from(n)
    }

    fn check_index(&self, index: u32) -> Result<(), FileError> {
        if index < self.chunks {
            Ok(())
        } else {
            Err(FileError::ChunkOutOfRange {
                index,
                chunks: self.chunks,
            })
        }
    }

    /// Seals chunk `index`'s plaintext (padding included: see [`chunk_plain_len`]).
    pub fn seal(&self, index: u32, plain: &[u8]) -> Result<Vec<u8>, FileError> {
        self.check_index(index)?;
        XChaCha20Poly1305::new(&self.key.0.into())
            .encrypt(&self.nonce(index), plain)
            .map_err(|_| FileError::Chunk(index))
    }

    /// Opens chunk `index`. Fails on any change to the chunk, on a chunk of another index or
    /// file, and on a non-final chunk presented as the last (or the reverse).
    pub fn open(&self, index: u32, sealed: &[u8]) -> Result<Vec<u8>, FileError> {
        self.check_index(index)?;
        XChaCha20Poly1305::new(&self.key.0.into())
            .decrypt(&self.nonce(index), sealed)
            .map_err(|_| FileError::Chunk(index))
    }
}

/// The SHA-256 of a file, computed as its bytes stream past.
#[derive(Clone, Default)]
pub struct FileDigest(Sha256);

impl FileDigest {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// A file as its recipient learns of it, only ever inside an end-to-end message: what it is,
/// how to open it, where its chunks are and the capability to fetch them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The sender's name for it: a bare file name (see [`valid_file_name`]).
    pub name: String,
    pub mime: String,
    pub caption: String,
    /// The true length in bytes (the chunks hold [`padded_len`] of it).
    pub size: u64,
    /// SHA-256 of the file's bytes.
    pub digest: [u8; 32],
    pub cipher: FileCipher,
    /// The node holding the chunks (the sender's home node) and the blob's id there.
    pub node: String,
    pub blob: BlobId,
    pub cap: Capability,
    /// When the holding node deletes the chunks at the latest.
    pub expires_at: Millis,
}

impl FileRef {
    /// The limits every file reference keeps, checked when one is made and when one is received.
    pub fn check(&self) -> Result<(), FileError> {
        if self.size > MAX_FILE_BYTES {
            return Err(FileError::TooLarge(self.size));
        }
        if !valid_file_name(&self.name) {
            return Err(FileError::BadName);
        }
        if !valid_mime(&self.mime) {
            return Err(FileError::BadMime);
        }
        if self.caption.len() > MAX_CAPTION_BYTES {
            return Err(FileError::CaptionTooLong(self.caption.len()));
        }
        if u64::from(self.cipher.chunks) != chunk_count(self.size) {
            return Err(FileError::BadLayout);
        }
        if !crate::envelope::valid_node_id(&self.node) {
            return Err(FileError::BadNode);
        }
        Ok(())
    }
}

/// A name a recipient may save a file under without it going anywhere else: 1 to
/// [`MAX_FILE_NAME_BYTES`] bytes, no path separator, not `.` or `..`, nothing hidden (no leading
/// dot), and nothing a terminal would interpret ([`display::line`] leaves it as it is).
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME_BYTES
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && display::line(name) == name
}

/// `type/subtype`, ASCII, as MIME types are written: the recipient's client shows it, no more.
pub fn valid_mime(mime: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
    };
    mime.len() <= MAX_MIME_BYTES && mime.split_once('/').is_some_and(|(a, b)| ok(a) && ok(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn cipher(size: u64) -> FileCipher {
        FileCipher::generate(&mut rand::rngs::StdRng::seed_from_u64(5), size).unwrap()
    }

    /// Seals a whole file as the device does: padded, chunk by chunk.
    fn seal_all(c: &FileCipher, file: &[u8]) -> Vec<Vec<u8>> {
        let size = file.len() as u64;
        (0..c.chunks)
            .map(|i| {
                let start = (u64::from(i) * u64::from(CHUNK_BYTES)) as usize;
                let mut plain = vec![0u8; chunk_plain_len(size, i) as usize];
                let have = file.len().saturating_sub(start).min(plain.len());
                plain[..have].copy_from_slice(&file[start..start + have]);
                c.seal(i, &plain).unwrap()
            })
            .collect()
    }

    fn open_all(c: &FileCipher, size: u64, chunks: &[Vec<u8>]) -> Result<Vec<u8>, FileError> {
        if chunks.len() != c.chunks as usize {
            return Err(FileError::BadLayout);
        }
        let mut out = Vec::new();
        for (i, ch) in chunks.iter().enumerate() {
            out.extend(c.open(i as u32, ch)?);
        }
        out.truncate(size as usize);
        Ok(out)
    }

    #[test]
    fn padme_buckets_are_coarse_and_cost_at_most_an_eighth() {
        assert_eq!(padded_len(0), MIN_PADDED_BYTES);
        assert_eq!(padded_len(1), MIN_PADDED_BYTES);
        assert_eq!(padded_len(MIN_PADDED_BYTES), MIN_PADDED_BYTES);
        for size in [
            5000u64,
            65_537,
            1 << 20,
            10_000_000,
            1 << 30,
            (1 << 30) + 1,
            MAX_FILE_BYTES,
        ] {
            let p = padded_len(size);
            assert!(p >= size && p - size <= size / 8, "{size} -> {p}");
            assert_eq!(padded_len(p), p, "a padded length is its own bucket");
        }
        // Many sizes share a bucket: around 1 GiB a bucket is 2^25 bytes wide.
        assert_eq!(padded_len((1 << 30) + 1), padded_len((1 << 30) + (1 << 25)));
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(u64::from(CHUNK_BYTES) * 4), 4);
        assert_eq!(chunk_plain_len(0, 0), MIN_PADDED_BYTES);
    }

    #[test]
    fn a_file_round_trips_and_each_chunk_opens_alone() {
        let file: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let c = cipher(file.len() as u64);
        assert_eq!(c.chunks, 3);
        let chunks = seal_all(&c, &file);
        assert_eq!(open_all(&c, file.len() as u64, &chunks).unwrap(), file);
        // Resuming at chunk 2 needs nothing of chunks 0 and 1.
        let last = c.open(2, &chunks[2]).unwrap();
        assert_eq!(
            &last[..700_000 - 2 * CHUNK_BYTES as usize],
            &file[2 * CHUNK_BYTES as usize..]
        );
        assert!(matches!(
            c.open(3, &chunks[2]),
            Err(FileError::ChunkOutOfRange { .. })
        ));
    }

    #[test]
    fn a_truncated_stream_fails_even_at_a_chunk_boundary() {
        let file = vec![7u8; 3 * CHUNK_BYTES as usize];
        let c = cipher(file.len() as u64);
        let chunks = seal_all(&c, &file);
        // Dropping the last chunk and calling the file two chunks long: chunk 1 was not sealed
        // as the last, so it does not open as the last.
        let short = FileCipher {
            chunks: c.chunks - 1,
            ..c.clone()
        };
        assert_eq!(short.open(1, &chunks[1]), Err(FileError::Chunk(1)));
        // Extending: a chunk sealed as last does not open as a middle one.
        let long = FileCipher {
            chunks: c.chunks + 1,
            ..c.clone()
        };
        assert_eq!(
            long.open(c.chunks - 1, &chunks[c.chunks as usize - 1]),
            Err(FileError::Chunk(c.chunks - 1))
        );
        // Another key.
        let other = FileCipher {
            key: FileKey([1; 32]),
            ..c.clone()
        };
        assert_eq!(other.open(0, &chunks[0]), Err(FileError::Chunk(0)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any reordering, duplication, truncation or bit flip of the sealed chunks fails.
        #[test]
        fn any_change_to_the_chunks_fails(
            size in 0u64..(5 * CHUNK_BYTES as u64),
            op in 0u8..4,
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
            bit in 0usize..(8 * 64),
        ) {
            let file: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
            let c = cipher(size);
            let good = seal_all(&c, &file);
            prop_assert_eq!(open_all(&c, size, &good).unwrap(), file);
            let n = good.len();
            let mut bad = good.clone();
            match op {
                // Swap two different chunks (a one-chunk file: swap with nothing, flip instead).
                0 if n > 1 => {
                    let (i, mut j) = (a.index(n), b.index(n));
                    if i == j { j = (i + 1) % n; }
                    bad.swap(i, j);
                }
                // Duplicate one chunk over another.
                1 if n > 1 => {
                    let (i, mut j) = (a.index(n), b.index(n));
                    if i == j { j = (i + 1) % n; }
                    bad[j] = bad[i].clone();
                }
                // Drop the tail (keep the chunk count: the last present chunk is not last).
                2 if n > 1 => {
                    let keep = 1 + a.index(n - 1);
                    bad.truncate(keep);
                    let short = FileCipher { chunks: keep as u32, ..c.clone() };
                    prop_assert!(open_all(&short, size, &bad).is_err());
                    return Ok(());
                }
                // Flip one bit of one chunk (or truncate a chunk by a byte).
                _ => {
                    let i = a.index(n);
                    let pos = bit % (bad[i].len() * 8);
                    if b.index(2) == 0 {
                        bad[i][pos / 8] ^= 1 << (pos % 8);
                    } else {
                        bad[i].pop();
                    }
                }
            }
            prop_assert!(open_all(&c, size, &bad).is_err());
        }
    }

    #[test]
    fn names_that_could_leave_the_download_folder_or_fool_a_terminal_are_refused() {
        for good in ["talk.mp4", "photo 1.jpg", "résumé.pdf", "a"] {
            assert!(valid_file_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".bashrc",
            "../x",
            "a/b",
            "a\\b",
            "x\0y",
            "a\u{1b}[2J",
            "a\u{202e}gpj.exe",
            "a\nb",
        ] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
        assert!(!valid_file_name(&"x".repeat(MAX_FILE_NAME_BYTES + 1)));
        assert!(valid_mime("video/mp4") && valid_mime("application/vnd.ms-excel"));
        for bad in [
            "",
            "video",
            "/mp4",
            "video/",
            "text/plain; charset=utf-8",
            "a/b\u{1b}",
        ] {
            assert!(!valid_mime(bad), "{bad:?}");
        }
    }

    fn file_ref(name: &str) -> FileRef {
        FileRef {
            name: name.into(),
            mime: "video/mp4".into(),
            caption: "the talk".into(),
            size: 700_000,
            digest: [3; 32],
            cipher: cipher(700_000),
            node: "12D3KooWnode".into(),
            blob: BlobId([4; 16]),
            cap: Capability([5; 32]),
            expires_at: 99,
        }
    }

    #[test]
    fn a_file_reference_travels_in_a_letter_and_a_bad_one_is_refused_whole() {
        use crate::envelope::{Content, EnvelopeError, Letter};
        let f = file_ref("talk.mp4");
        let l = Letter::new(
            "12D3KooWnode",
            "alice",
            Content::File(Box::new(f.clone())),
            1,
        )
        .unwrap();
        let back = Letter::from_bytes(&l.to_bytes().unwrap()).unwrap();
        assert_eq!(back.content, Content::File(Box::new(f)));
        // A modified client's reference: a path in the name, a layout that does not add up.
        let mut bad = l.clone();
        bad.content = Content::File(Box::new(file_ref("../../.ssh/authorized_keys")));
        assert_eq!(
            Letter::from_bytes(&bad.to_bytes().unwrap()),
            Err(EnvelopeError::BadFile(FileError::BadName))
        );
        let mut wrong = file_ref("talk.mp4");
        wrong.cipher.chunks = 1;
        bad.content = Content::File(Box::new(wrong));
        assert_eq!(
            Letter::from_bytes(&bad.to_bytes().unwrap()),
            Err(EnvelopeError::BadFile(FileError::BadLayout))
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = cipher(10);
        let shown = format!("{c:?} {:?}", Capability([9; 32]));
        assert!(
            !shown.contains("9, 9") && shown.contains("FileKey(…)"),
            "{shown}"
        );
    }
}
