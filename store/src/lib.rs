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

pub mod client;
pub mod node;
pub mod schema;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("stored value under {cf} is corrupt: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    #[error("database schema version {found} is newer than this program supports ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("database at {0} is not a {1} database")]
    WrongKind(PathBuf, &'static str),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Opens (or creates) a database with the given column families, checks its kind and schema
/// version, and writes both on first open.
pub(crate) fn open_db(
    path: &std::path::Path,
    cfs: &[&str],
    kind: &'static str,
) -> Result<rocksdb::DB> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Bodies are ciphertext: compression would spend CPU for nothing (and is not compiled in).
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    opts.set_max_open_files(256);
    opts.set_keep_log_file_num(4);
    // Open every family already there too, so a database of the other kind opens and is then
    // refused by its recorded kind rather than by a RocksDB error.
    let mut all: Vec<String> = cfs.iter().map(|s| s.to_string()).collect();
    for existing in rocksdb::DB::list_cf(&opts, path).unwrap_or_default() {
        if !all.contains(&existing) && existing != "default" {
            all.push(existing);
        }
    }
    let db = rocksdb::DB::open_cf(&opts, path, all).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = db
        .cf_handle(schema::META)
        .expect("meta is in every column family list");
    match db.get_cf(&meta, b"kind")? {
        Some(k) if k == kind.as_bytes() => {}
        Some(_) => return Err(StoreError::WrongKind(path.to_path_buf(), kind)),
        None => {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
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
    // Migrations, one step per version. 1 → 2 added the prekey and session column families,
    // which `create_missing_column_families` has just created empty.
    if version < 2 {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        db.put_cf_opt(&meta, b"schema_version", 2u32.to_be_bytes(), &wo)?;
    }
    Ok(db)
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

pub(crate) fn encode_value<T: serde::Serialize>(cf: &'static str, v: &T) -> Result<Vec<u8>> {
    hestia_protocol::codec::encode(v).map_err(|e| StoreError::Corrupt {
        cf,
        reason: e.to_string(),
    })
}
