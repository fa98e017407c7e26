//! Online backups of a node's database with RocksDB's BackupEngine: consistent while the node
//! runs (the engine flushes and copies the live files), incremental (files shared between
//! backups are copied once), checked by restoring into a scratch directory and decoding every
//! entry.
//!
//! What a backup holds is the database: accounts, mailboxes, outboxes, prekeys, push
//! subscriptions, the operator's state, blob records, the node's keys. File chunks (sealed
//! ciphertext beside the database, often far larger and short-lived) are not in it: after a
//! restore, files uploaded before the backup are gone unless the chunk directory was kept
//! (docs/operating.md).
//!
//! A restore must not hand out a one-time prekey twice: a key handed out after the backup was
//! taken would be in the restored database again, and a second contact using it would find the
//! device's secret long deleted. So a restore drops every stored one-time prekey; devices see
//! they have none left and publish fresh ones.

use crate::node::NodeDb;
use crate::schema::USERID_ONETIMEPREKEY;
use crate::{Result, StoreError};
use rocksdb::backup::{BackupEngine, BackupEngineOptions, RestoreOptions};
use std::path::{Path, PathBuf};

/// One backup in a backup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub id: u32,
    /// Unix seconds.
    pub created_at: i64,
    pub bytes: u64,
    pub files: u32,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub id: u32,
    /// Where the database that was there went (nothing is deleted).
    pub moved_aside: Option<PathBuf>,
    pub dropped_one_time_prekeys: u64,
}

fn engine(dir: &Path) -> Result<BackupEngine> {
    crate::secure_dir(dir)?;
    let opts = BackupEngineOptions::new(dir)?;
    let env = rocksdb::Env::new()?;
    Ok(BackupEngine::open(&opts, &env)?)
}

fn info(e: &BackupEngine) -> Vec<Backup> {
    e.get_backup_info()
        .into_iter()
        .map(|i| Backup {
            id: i.backup_id,
            created_at: i.timestamp,
            bytes: i.size,
            files: i.num_files,
        })
        .collect()
}

/// The backups in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Backup>> {
    Ok(info(&engine(dir)?))
}

fn pick(e: &BackupEngine, id: Option<u32>) -> Result<u32> {
    let all = info(e);
    match id {
        Some(id) if all.iter().any(|b| b.id == id) => Ok(id),
        Some(id) => Err(StoreError::NoBackup(format!("no backup {id}"))),
        None => all
            .last()
            .map(|b| b.id)
            .ok_or_else(|| StoreError::NoBackup("no backups yet".into())),
    }
}

impl NodeDb {
    /// Takes a consistent backup into `dir` while the node runs, then keeps the newest `keep`.
    pub fn backup(&self, dir: &Path, keep: usize) -> Result<Backup> {
        let mut e = engine(dir)?;
        e.create_new_backup_flush(self.rocks(), true)?;
        e.purge_old_backups(keep.max(1))?;
        info(&e)
            .pop()
            .ok_or_else(|| StoreError::NoBackup("the backup is not listed".into()))
    }
}

/// Checks backup `id` (the newest if `None`): its files' sizes, then a restore into a scratch
/// directory beside `dir` whose every entry is decoded. The number of entries.
pub fn verify(dir: &Path, id: Option<u32>) -> Result<(u32, u64)> {
    let mut e = engine(dir)?;
    let id = pick(&e, id)?;
    e.verify_backup(id)?;
    let scratch = dir.join(format!("verify-{id}"));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = (|| {
        e.restore_from_backup(&scratch, &scratch, &RestoreOptions::default(), id)?;
        NodeDb::open_read_only(&scratch)?.check()
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(scratch.with_file_name(format!("verify-{id}.chunks")));
    Ok((id, result?))
}

/// Restores backup `id` (the newest if `None`) from `dir` as the database at `db`, which no
/// node may have open. The database there is moved aside, not deleted. Every one-time prekey
/// is dropped (see the module's docs).
pub fn restore(dir: &Path, id: Option<u32>, db: &Path) -> Result<Restored> {
    let mut e = engine(dir)?;
    let id = pick(&e, id)?;
    let moved_aside = if db.exists() {
        // Opening takes the database's lock: a running node holds it.
        drop(NodeDb::open(db).map_err(|e| match e {
            StoreError::Open { source, .. } if source.to_string().contains("lock") => {
                StoreError::InUse(db.to_path_buf())
            }
            other => other,
        })?);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".before-restore-{secs}"));
        let aside = db.with_file_name(name);
        std::fs::rename(db, &aside).map_err(|source| StoreError::Io {
            path: db.to_path_buf(),
            source,
        })?;
        Some(aside)
    } else {
        None
    };
    e.restore_from_backup(db, db, &RestoreOptions::default(), id)?;
    let restored = NodeDb::open(db)?;
    let dropped = restored.drop_one_time_prekeys()?;
    restored.flush()?;
    Ok(Restored {
        id,
        moved_aside,
        dropped_one_time_prekeys: dropped,
    })
}

impl NodeDb {
    /// Deletes every stored one-time prekey, in one synced batch; how many.
    fn drop_one_time_prekeys(&self) -> Result<u64> {
        let cf = self
            .rocks()
            .cf_handle(USERID_ONETIMEPREKEY)
            .expect("opened");
        let mut batch = rocksdb::WriteBatch::default();
        let mut n = 0;
        for item in self.rocks().iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, _) = item?;
            batch.delete_cf(cf, k);
            n += 1;
        }
        self.rocks().write_opt(batch, &crate::synced())?;
        Ok(n)
    }
}
