//! The RocksDB settings an operator may change (docs/operating.md, "The database"): the
//! memory the database uses, how its own info log (`db/LOG`) rotates, and how it recovers its
//! write-ahead log after a crash. Everything else is fixed in [`crate::open_db`].

use std::fmt;
use std::str::FromStr;

/// Smallest memory budget taken: below it memtables flush so often that writes stall.
pub const MIN_MEMORY_BYTES: usize = 8 << 20;
/// Largest memory budget taken.
pub const MAX_MEMORY_BYTES: usize = 64 << 30;
/// Default memory budget: 16 MiB of memtables and an 8 MiB block cache.
pub const MEMORY_BYTES: usize = 24 << 20;
/// Default size at which the info log is rotated.
pub const LOG_FILE_BYTES: usize = 16 << 20;
/// Default number of old info logs kept.
pub const LOG_FILES_KEPT: usize = 4;
/// Most old info logs kept.
pub const MAX_LOG_FILES_KEPT: usize = 1000;

/// How RocksDB treats a damaged write-ahead log when it opens after a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WalRecovery {
    /// Replays the log up to the first damaged record and drops the rest (RocksDB's own
    /// default). Every synced write is before such a tail, so nothing acknowledged is lost.
    #[default]
    PointInTime,
    /// Refuses to open on any damage in the log: the operator decides (restore a backup).
    Absolute,
    /// Tolerates only an incomplete last record, as a crash mid-write leaves; other damage
    /// refuses to open.
    TolerateTail,
}

impl WalRecovery {
    pub const NAMES: [&'static str; 3] = ["point-in-time", "absolute", "tolerate-tail"];
}

impl fmt::Display for WalRecovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WalRecovery::PointInTime => "point-in-time",
            WalRecovery::Absolute => "absolute",
            WalRecovery::TolerateTail => "tolerate-tail",
        })
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown write-ahead log recovery mode {0:?} (point-in-time, absolute or tolerate-tail)")]
pub struct UnknownWalRecovery(String);

impl FromStr for WalRecovery {
    type Err = UnknownWalRecovery;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "point-in-time" => Ok(WalRecovery::PointInTime),
            "absolute" => Ok(WalRecovery::Absolute),
            "tolerate-tail" => Ok(WalRecovery::TolerateTail),
            other => Err(UnknownWalRecovery(other.to_string())),
        }
    }
}

/// The operator's database settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbTuning {
    /// Memtables and block cache together (clamped to [`MIN_MEMORY_BYTES`]..=
    /// [`MAX_MEMORY_BYTES`]). Memory does not grow with what is stored past this and the
    /// process's own few MiB.
    pub memory_bytes: usize,
    /// The info log is rotated at this size (at least 1 MiB).
    pub log_file_bytes: usize,
    /// Old info logs kept (1..=[`MAX_LOG_FILES_KEPT`]).
    pub log_files_kept: usize,
    pub wal_recovery: WalRecovery,
}

impl Default for DbTuning {
    fn default() -> Self {
        DbTuning {
            memory_bytes: MEMORY_BYTES,
            log_file_bytes: LOG_FILE_BYTES,
            log_files_kept: LOG_FILES_KEPT,
            wal_recovery: WalRecovery::default(),
        }
    }
}

/// How a memory budget is split: memtables (total, and one) and the block cache.
#[derive(Debug, PartialEq, Eq)]
pub struct MemorySplit {
    pub memtables_total: usize,
    pub memtable: usize,
    pub block_cache: usize,
}

impl DbTuning {
    /// Two thirds for memtables (four of them fill it), one third for the cache of table
    /// blocks and indexes.
    pub fn split(&self) -> MemorySplit {
        let budget = self.memory_bytes.clamp(MIN_MEMORY_BYTES, MAX_MEMORY_BYTES);
        let memtables_total = budget / 3 * 2;
        MemorySplit {
            memtables_total,
            memtable: memtables_total / 4,
            block_cache: budget - memtables_total,
        }
    }

    #[cfg(feature = "rocksdb")]
    pub(crate) fn apply(&self, opts: &mut rocksdb::Options) -> rocksdb::Cache {
        let m = self.split();
        opts.set_write_buffer_size(m.memtable);
        opts.set_db_write_buffer_size(m.memtables_total);
        opts.set_max_log_file_size(self.log_file_bytes.max(1 << 20));
        opts.set_keep_log_file_num(self.log_files_kept.clamp(1, MAX_LOG_FILES_KEPT));
        opts.set_wal_recovery_mode(match self.wal_recovery {
            WalRecovery::PointInTime => rocksdb::DBRecoveryMode::PointInTime,
            WalRecovery::Absolute => rocksdb::DBRecoveryMode::AbsoluteConsistency,
            WalRecovery::TolerateTail => rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords,
        });
        rocksdb::Cache::new_lru_cache(m.block_cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_split_is_the_old_fixed_one() {
        let m = DbTuning::default().split();
        assert_eq!(m.memtables_total, 16 << 20);
        assert_eq!(m.memtable, 4 << 20);
        assert_eq!(m.block_cache, 8 << 20);
    }

    #[test]
    fn a_budget_is_clamped_and_split_within_itself() {
        for bytes in [0, 1 << 20, 100 << 20, usize::MAX] {
            let t = DbTuning {
                memory_bytes: bytes,
                ..Default::default()
            };
            let m = t.split();
            let budget = bytes.clamp(MIN_MEMORY_BYTES, MAX_MEMORY_BYTES);
            assert!(m.memtables_total + m.block_cache == budget);
            assert!(m.memtable * 4 <= m.memtables_total);
        }
    }

    #[test]
    fn recovery_modes_read_back_their_names() {
        for name in WalRecovery::NAMES {
            assert_eq!(name.parse::<WalRecovery>().unwrap().to_string(), name);
        }
        assert!("skip-any".parse::<WalRecovery>().is_err());
    }
}
