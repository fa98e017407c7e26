//! Hestia's storage. Two databases, both RocksDB:
//!
//! - the node database ([`node::NodeDb`]): accounts homed here, per-user mailboxes, the
//!   federation outbox, delivery-state records. It holds ciphertext and routing metadata only.
//! - the client database ([`client::ClientDb`]) on a user's device: identity key, home node,
//!   contacts with their pinned keys, and message history.
//!
//! [`schema`] is the one file that lists every column family and encodes every key. Values are
//! encoded with the protocol codec. Node writes go through [`node::NodeStore::apply`], one
//! atomic, synced batch: whatever a node acknowledges was in such a batch first.
//! [`node::MemNodeStore`] implements the same interface in memory for tests and simulations.
//! [`records`] holds every stored value type and decodes any stored key and value; it and
//! [`schema`] build without RocksDB (the default feature `rocksdb`), for the fuzz targets.

#[cfg(feature = "rocksdb")]
pub mod backup;
#[cfg(feature = "rocksdb")]
mod chunks;
#[cfg(feature = "rocksdb")]
pub mod client;
#[cfg(feature = "rocksdb")]
pub mod node;
pub mod records;
pub mod schema;
pub mod tuning;
pub mod vault;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[cfg(feature = "rocksdb")]
    #[error("database at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[cfg(feature = "rocksdb")]
    #[error("database error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("stored value under {cf} is corrupt: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    #[error("database schema version {found} is newer than this program supports ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("database at {0} is not a {1} database")]
    WrongKind(PathBuf, &'static str),
    #[error("this device's data is encrypted and no passphrase was given")]
    Locked,
    #[error("wrong passphrase (nothing was changed)")]
    WrongPassphrase,
    #[error("this device's data is already encrypted")]
    AlreadyEncrypted,
    #[error("this device's data is not encrypted")]
    NotEncrypted,
    #[error("{0}")]
    NoBackup(String),
    #[error("the database at {0} is in use: stop the node first")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

static UNSYNCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For `hestia bench` only: while `on`, this process's writes are not synced before they
/// return, so an acknowledgement means "in the operating system's cache", as it does for
/// servers that do not fsync. Nothing else calls this; a node never runs this way.
pub fn benchmark_unsynced(on: bool) {
    UNSYNCED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The options of every write: synced, so it is on disk when it returns.
#[cfg(feature = "rocksdb")]
pub(crate) fn synced() -> rocksdb::WriteOptions {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(!UNSYNCED.load(std::sync::atomic::Ordering::Relaxed));
    wo
}

/// Values at least this large in the chunk family go to blob files.
#[cfg(feature = "rocksdb")]
const CHUNK_BLOB_MIN_BYTES: u64 = 4096;
/// Size of one blob file.
#[cfg(feature = "rocksdb")]
const BLOB_FILE_BYTES: u64 = 64 << 20;

/// Opens (or creates) a database with the given column families, checks its kind and schema
/// version, and writes both on first open. `migrate(db, from)` runs the kind's own migration
/// steps from version `from` (older than [`schema::SCHEMA_VERSION`]); the version is recorded
/// as current only after it succeeds, so an interrupted migration runs again.
#[cfg(feature = "rocksdb")]
pub(crate) fn open_db(
    path: &std::path::Path,
    cfs: &[&str],
    kind: &'static str,
    tuning: &tuning::DbTuning,
    migrate: impl FnOnce(&rocksdb::DB, u32) -> Result<()>,
) -> Result<rocksdb::DB> {
    secure_dir(path)?;
    let mut opts = rocksdb::Options::default();
    if kind == "client" {
        // The MANIFEST keeps every table file's smallest and largest key, also of files long
        // deleted, until it is rewritten, and a device's keys name contacts until a
        // passphrase blinds them: start a fresh MANIFEST (a snapshot of the live files) at
        // every change, so a device encrypted later keeps no clear key there. A device's
        // tables change rarely; the cost is one small file per flush or compaction.
        opts =
            opts.get_options_from_string("max_manifest_file_size=1;max_manifest_space_amp_pct=0")?;
    }
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Bodies are ciphertext: compression would spend CPU for nothing (and is not compiled in).
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    opts.set_max_open_files(256);
    // Memory does not grow with what is stored: memtables are small and capped together (a
    // restart after a crash replays at most this much of the write-ahead log into memory),
    // and reads go through one small block cache; the operator sets the budget.
    let cache = tuning.apply(&mut opts);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&cache);
    // Index blocks live in that cache too, instead of beside every open table file, so they
    // do not grow with the data either.
    table.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&table);
    // Open every family already there too, so a database of the other kind opens and is then
    // refused by its recorded kind rather than by a RocksDB error.
    let mut all: Vec<String> = cfs.iter().map(|s| s.to_string()).collect();
    for existing in rocksdb::DB::list_cf(&opts, path).unwrap_or_default() {
        if !all.contains(&existing) && existing != "default" {
            all.push(existing);
        }
    }
    let descriptors = all.into_iter().map(|name| {
        let mut cf_opts = opts.clone();
        if name == schema::BLOBID_INDEX_CHUNK {
            // Until schema 6 file chunks (256 KiB each) lived here, in blob files beside the
            // LSM tree; they move to chunk files (`chunks.rs`) when such a database is opened.
            // The options stay so those blob files read as they were written.
            cf_opts.set_enable_blob_files(true);
            cf_opts.set_min_blob_size(CHUNK_BLOB_MIN_BYTES);
            cf_opts.set_blob_file_size(BLOB_FILE_BYTES);
            cf_opts.set_enable_blob_gc(true);
            cf_opts.set_blob_gc_age_cutoff(0.5);
        }
        rocksdb::ColumnFamilyDescriptor::new(name, cf_opts)
    });
    let db = rocksdb::DB::open_cf_descriptors(&opts, path, descriptors).map_err(|source| {
        StoreError::Open {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let meta = db
        .cf_handle(schema::META)
        .expect("meta is in every column family list");
    match db.get_cf(&meta, b"kind")? {
        Some(k) if k == kind.as_bytes() => {}
        Some(_) => return Err(StoreError::WrongKind(path.to_path_buf(), kind)),
        None => {
            let wo = crate::synced();
            let mut b = rocksdb::WriteBatch::default();
            b.put_cf(&meta, b"kind", kind.as_bytes());
            b.put_cf(
                &meta,
                b"schema_version",
                schema::SCHEMA_VERSION.to_be_bytes(),
            );
            db.write_opt(b, &wo)?;
        }
    }
    let version = db
        .get_cf(&meta, b"schema_version")?
        .and_then(|v| Some(u32::from_be_bytes(v.as_slice().try_into().ok()?)))
        .ok_or(StoreError::Corrupt {
            cf: schema::META,
            reason: "no schema version".into(),
        })?;
    if version > schema::SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: schema::SCHEMA_VERSION,
        });
    }
    // Migrations, one step per version, the kind's own in `migrate`. 1 → 2 added the prekey
    // and session column families, which `create_missing_column_families` has just created
    // empty; 2 → 3 added the client's blocked, receipt and setting families the same way.
    if version < schema::SCHEMA_VERSION {
        migrate(&db, version)?;
        let wo = crate::synced();
        db.put_cf_opt(
            &meta,
            b"schema_version",
            schema::SCHEMA_VERSION.to_be_bytes(),
            &wo,
        )?;
    }
    Ok(db)
}

/// Decodes every stored key and value of these column families with [`records::check`] and
/// returns how many entries there are: a full check of a database (or a backup of one).
#[cfg(feature = "rocksdb")]
pub(crate) fn check_all(db: &rocksdb::DB, cfs: &[&str]) -> Result<u64> {
    let mut n = 0;
    for name in cfs {
        let cf = db
            .cf_handle(name)
            .expect("every column family is created at open");
        for item in db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            records::check(name, &k, &v)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Creates a data directory readable by its owner only (0700), or narrows an existing one:
/// it holds identity seeds, session state and history (device) or the node key and mail.
/// With the directory closed, the files' own modes no longer matter to other local users.
pub fn secure_dir(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source: std::io::Error| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes a secret file (a node key) readable by its owner only, created with mode 0600 so
/// it is never readable by others, not even between creation and a later chmod, and synced.
pub fn write_secret_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source: std::io::Error| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its old mode through open(): narrow it too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(
    cf: &'static str,
    v: &[u8],
) -> Result<T> {
    hestia_protocol::codec::decode(v, hestia_protocol::codec::MAX_FRAME_BYTES).map_err(|e| {
        StoreError::Corrupt {
            cf,
            reason: e.to_string(),
        }
    })
}

#[cfg(feature = "rocksdb")]
pub(crate) fn encode_value<T: serde::Serialize>(cf: &'static str, v: &T) -> Result<Vec<u8>> {
    hestia_protocol::codec::encode(v).map_err(|e| StoreError::Corrupt {
        cf,
        reason: e.to_string(),
    })
}
