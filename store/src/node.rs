//! The node database and the interface the relay core's writes go through.

use crate::chunks::ChunkFiles;
pub use crate::records::{
    AccountRecord, BlobRecord, FederationRecord, FederationRule, InviteRecord, OutboxRecord,
    PushRecord, StatusRecord, SuspensionRecord,
};
use crate::records::{MailboxMeta, OutboxMeta};
use crate::schema::{self, *};
use crate::tuning::DbTuning;
use crate::{Result, decode_value, encode_value};
use hestia_protocol::Millis;
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::file::BlobId;
use hestia_protocol::identity::UserId;
use hestia_protocol::session::prekeys::SignedPrekey;
use std::collections::BTreeMap;
use std::path::Path;

/// One durable change. The relay core emits these; a [`NodeStore`] applies them atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeWrite {
    PutAccount(UserId, AccountRecord),
    PutMailbox(Envelope),
    DeleteMailbox(UserId, EnvelopeId),
    PutOutbox(OutboxRecord),
    DeleteOutbox(String, EnvelopeId),
    PutStatus(EnvelopeId, StatusRecord),
    DeleteStatus(EnvelopeId),
    PutSignedPrekey(UserId, SignedPrekey),
    PutOneTimePrekey(UserId, [u8; 32]),
    DeleteOneTimePrekey(UserId, [u8; 32]),
    PutBlob(BlobId, BlobRecord),
    /// One sealed chunk of a blob.
    PutChunk(BlobId, u32, Vec<u8>),
    /// Every chunk of a blob (its record stays).
    DeleteChunks(BlobId),
    /// A blob's record and every chunk.
    DeleteBlob(BlobId),
    /// A user's push subscription (replacing one with the same endpoint).
    PutPush(UserId, PushRecord),
    /// A user's push subscription, by endpoint id.
    DeletePush(UserId, [u8; 16]),
    /// An account and its signed prekey (the operator deleted it; the rest of what it held
    /// goes in writes of its own).
    DeleteAccount(UserId),
    PutSuspension(UserId, SuspensionRecord),
    DeleteSuspension(UserId),
    /// An invite, by the SHA-256 of its token.
    PutInvite([u8; 32], InviteRecord),
    DeleteInvite([u8; 32]),
    PutFederation(String, FederationRecord),
    DeleteFederation(String),
}

/// What the relay core keeps of an envelope held for a local user: enough to decide (order,
/// expiry, batch sizes), never the body, which stays in the store until a fetch reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxEntry {
    pub recipient: UserId,
    pub id: EnvelopeId,
    pub expires_at: Millis,
    /// Body length in bytes.
    pub size: u32,
}

impl MailboxEntry {
    pub fn of(e: &Envelope) -> MailboxEntry {
        MailboxEntry {
            recipient: e.recipient,
            id: e.id,
            expires_at: e.expires_at,
            size: e.body.len().min(u32::MAX as usize) as u32,
        }
    }
}

/// What the relay core keeps of an envelope waiting in the outbox for another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub owner: UserId,
    pub to_node: String,
    pub id: EnvelopeId,
    pub expires_at: Millis,
    pub size: u32,
}

impl OutboxEntry {
    pub fn of(r: &OutboxRecord) -> OutboxEntry {
        OutboxEntry {
            owner: r.owner,
            to_node: r.to_node.clone(),
            id: r.envelope.id,
            expires_at: r.envelope.expires_at,
            size: r.envelope.body.len().min(u32::MAX as usize) as u32,
        }
    }
}

/// What the relay core needs to resume after a restart, but the mailbox entries, which
/// [`NodeStore::for_each_mailbox`] streams (a node may hold millions; they are not collected
/// first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub accounts: Vec<(UserId, AccountRecord)>,
    pub outbox: Vec<OutboxEntry>,
    pub status: Vec<(EnvelopeId, StatusRecord)>,
    pub signed_prekeys: Vec<(UserId, SignedPrekey)>,
    pub one_time_prekeys: Vec<(UserId, [u8; 32])>,
    pub blobs: Vec<(BlobId, BlobRecord)>,
    pub push: Vec<(UserId, PushRecord)>,
    pub suspensions: Vec<(UserId, SuspensionRecord)>,
    pub invites: Vec<([u8; 32], InviteRecord)>,
    pub federation: Vec<(String, FederationRecord)>,
}

/// Where the relay core's state lives. `apply` is atomic and durable when it returns `Ok`:
/// after a crash either all of a batch is there or none of it.
pub trait NodeStore {
    fn load(&self) -> Result<NodeSnapshot>;
    /// Every mailbox entry (metadata only), in key order.
    fn for_each_mailbox(&self, each: &mut dyn FnMut(MailboxEntry)) -> Result<()>;
    fn apply(&mut self, writes: &[NodeWrite]) -> Result<()>;
    /// The bodies of these envelopes in `user`'s mailbox, in the order asked; any no longer
    /// held is left out.
    fn mailbox_envelopes(&self, user: &UserId, ids: &[EnvelopeId]) -> Result<Vec<Envelope>>;
    /// The envelopes of these outbox records for `node`, in the order asked; any no longer
    /// held is left out.
    fn outbox_envelopes(&self, node: &str, ids: &[EnvelopeId]) -> Result<Vec<Envelope>>;
    /// One sealed chunk of a blob, if held.
    fn blob_chunk(&self, blob: &BlobId, index: u32) -> Result<Option<Vec<u8>>>;
}

/// The RocksDB node database, and the chunk files beside it (`crate::chunks`).
pub struct NodeDb {
    db: rocksdb::DB,
    chunks: ChunkFiles,
}

impl NodeDb {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_tuned(path, &DbTuning::default())
    }

    /// [`NodeDb::open`] with the operator's database settings.
    pub fn open_tuned(path: &Path, tuning: &DbTuning) -> Result<Self> {
        let chunks = ChunkFiles::beside(path, false)?;
        let db = crate::open_db(path, NODE_CFS, "node", tuning, |db, from| {
            migrate(db, from, &chunks)
        })?;
        let db = NodeDb { db, chunks };
        // Files of blobs whose chunks were deleted (a crash between record and file).
        let holding: std::collections::HashSet<BlobId> = db
            .load_blobs()?
            .into_iter()
            .filter(|(_, r)| r.phase != hestia_protocol::wire::BlobPhase::Fetched)
            .map(|(id, _)| id)
            .collect();
        let removed = db.chunks.collect_garbage(|id| holding.contains(id))?;
        if removed > 0 {
            tracing::info!(files = removed, "chunk files of deleted blobs removed");
        }
        Ok(db)
    }

    fn load_blobs(&self) -> Result<Vec<(BlobId, BlobRecord)>> {
        self.scan::<BlobRecord>(BLOBID_BLOB)?
            .into_iter()
            .map(|(k, v)| {
                let id: [u8; 16] = k.as_ref().try_into().map_err(|_| corrupt(BLOBID_BLOB))?;
                Ok((BlobId(id), v))
            })
            .collect()
    }

    fn blob_record(&self, blob: &BlobId) -> Result<Option<BlobRecord>> {
        match self.db.get_cf(self.cf(BLOBID_BLOB), blob.0)? {
            Some(v) => Ok(Some(decode_value(BLOBID_BLOB, &v)?)),
            None => Ok(None),
        }
    }

    /// Opens a database that a running node holds, to read it (`hestia node inspect`).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let opts = rocksdb::Options::default();
        let db = rocksdb::DB::open_cf_for_read_only(&opts, path, NODE_CFS.iter().copied(), false)
            .map_err(|source| crate::StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(NodeDb {
            db,
            chunks: ChunkFiles::beside(path, true)?,
        })
    }

    pub(crate) fn rocks(&self) -> &rocksdb::DB {
        &self.db
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    /// Writes every memtable to table files, so the next open has no log to replay into memory
    /// (up to the memtable budget, 16 MiB) before it can start: a clean shutdown does this.
    pub fn flush(&self) -> Result<()> {
        let cfs: Vec<_> = NODE_CFS.iter().map(|n| self.cf(n)).collect();
        Ok(self
            .db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?)
    }

    /// The node's libp2p key, in libp2p's protobuf encoding.
    pub fn node_key(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(META), b"node_key")?)
    }

    pub fn set_node_key(&self, key: &[u8]) -> Result<()> {
        let wo = crate::synced();
        Ok(self.db.put_cf_opt(self.cf(META), b"node_key", key, &wo)?)
    }

    /// The node's VAPID secret (a P-256 scalar), which signs its push wake-ups.
    pub fn vapid_key(&self) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        self.meta_secret(b"vapid_key")
    }

    pub fn set_vapid_key(&self, key: &[u8; 32]) -> Result<()> {
        self.set_meta_secret(b"vapid_key", key)
    }

    /// A 32-byte secret the node keeps in `meta`, zeroed when dropped.
    fn meta_secret(&self, name: &[u8]) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        Ok(self
            .db
            .get_cf(self.cf(META), name)?
            .map(zeroize::Zeroizing::new))
    }

    fn set_meta_secret(&self, name: &[u8], secret: &[u8; 32]) -> Result<()> {
        let wo = crate::synced();
        Ok(self.db.put_cf_opt(self.cf(META), name, secret, &wo)?)
    }

    /// The node's call-relay secret, from which its TURN credentials are derived
    /// (`hestia_protocol::turn`).
    pub fn turn_secret(&self) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        self.meta_secret(b"turn_secret")
    }

    pub fn set_turn_secret(&self, secret: &[u8; 32]) -> Result<()> {
        self.set_meta_secret(b"turn_secret", secret)
    }

    /// Decodes every stored entry ([`crate::records::check`]); the number of entries.
    /// Every chunk file must belong to a blob with a record and lie within its chunks.
    pub fn check(&self) -> Result<u64> {
        let mut n = crate::check_all(&self.db, NODE_CFS)?;
        for (blob, path, len) in self.chunks.list()? {
            let bad = |reason: &str| crate::StoreError::Corrupt {
                cf: "chunk files",
                reason: format!("{}: {reason}", path.display()),
            };
            let blob = blob.ok_or_else(|| bad("not a blob id"))?;
            let rec = self.blob_record(&blob)?.ok_or_else(|| bad("no record"))?;
            let span = u64::from(rec.spec.chunks.saturating_sub(1))
                * u64::from(hestia_protocol::file::SEALED_CHUNK_BYTES)
                + u64::from(rec.spec.last_chunk_bytes);
            if len > span {
                return Err(bad("longer than its chunks"));
            }
            n += 1;
        }
        Ok(n)
    }

    fn scan<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
    ) -> Result<Vec<(Box<[u8]>, T)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push((k, decode_value(cf, &v)?));
        }
        Ok(out)
    }
}

impl NodeStore for NodeDb {
    fn load(&self) -> Result<NodeSnapshot> {
        let accounts = self
            .scan::<AccountRecord>(USERID_ACCOUNT)?
            .into_iter()
            .map(|(k, v)| {
                let id: [u8; 32] = k.as_ref().try_into().map_err(|_| corrupt(USERID_ACCOUNT))?;
                Ok((UserId(id), v))
            })
            .collect::<Result<_>>()?;
        // The metadata family only: bodies stay on disk until a batch reads them.
        let outbox = self
            .scan::<OutboxMeta>(NODEID_ENVELOPEID_OUTBOXMETA)?
            .into_iter()
            .map(|(k, m)| {
                let (to_node, id) = schema::decode_outbox_key(&k)
                    .ok_or_else(|| corrupt(NODEID_ENVELOPEID_OUTBOXMETA))?;
                Ok(OutboxEntry {
                    owner: m.owner,
                    to_node,
                    id,
                    expires_at: m.expires_at,
                    size: m.size,
                })
            })
            .collect::<Result<_>>()?;
        let status = self
            .scan::<StatusRecord>(ENVELOPEID_STATUS)?
            .into_iter()
            .map(|(k, v)| {
                let id: [u8; 16] = k
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt(ENVELOPEID_STATUS))?;
                Ok((EnvelopeId(id), v))
            })
            .collect::<Result<_>>()?;
        let signed_prekeys = self
            .scan::<SignedPrekey>(USERID_SIGNEDPREKEY)?
            .into_iter()
            .map(|(k, v)| {
                let id: [u8; 32] = k
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt(USERID_SIGNEDPREKEY))?;
                Ok((UserId(id), v))
            })
            .collect::<Result<_>>()?;
        let mut one_time_prekeys = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(USERID_ONETIMEPREKEY), rocksdb::IteratorMode::Start)
        {
            let (k, _) = item?;
            if k.len() != 64 {
                return Err(corrupt(USERID_ONETIMEPREKEY));
            }
            let user: [u8; 32] = k[..32].try_into().expect("32 bytes");
            let key: [u8; 32] = k[32..].try_into().expect("32 bytes");
            one_time_prekeys.push((UserId(user), key));
        }
        let blobs = self.load_blobs()?;
        let push = self
            .scan::<PushRecord>(USERID_ENDPOINT_PUSH)?
            .into_iter()
            .map(|(k, v)| {
                let (user, _) =
                    schema::decode_push_key(&k).ok_or_else(|| corrupt(USERID_ENDPOINT_PUSH))?;
                Ok((user, v))
            })
            .collect::<Result<_>>()?;
        let key32 = |cf: &'static str, k: &[u8]| -> Result<[u8; 32]> {
            k.try_into().map_err(|_| corrupt(cf))
        };
        let suspensions = self
            .scan::<SuspensionRecord>(USERID_SUSPENSION)?
            .into_iter()
            .map(|(k, v)| Ok((UserId(key32(USERID_SUSPENSION, &k)?), v)))
            .collect::<Result<_>>()?;
        let invites = self
            .scan::<InviteRecord>(INVITEHASH_INVITE)?
            .into_iter()
            .map(|(k, v)| Ok((key32(INVITEHASH_INVITE, &k)?, v)))
            .collect::<Result<_>>()?;
        let federation = self
            .scan::<FederationRecord>(NODEID_FEDERATION)?
            .into_iter()
            .map(|(k, v)| {
                let node =
                    String::from_utf8(k.into_vec()).map_err(|_| corrupt(NODEID_FEDERATION))?;
                Ok((node, v))
            })
            .collect::<Result<_>>()?;
        Ok(NodeSnapshot {
            accounts,
            outbox,
            status,
            signed_prekeys,
            one_time_prekeys,
            blobs,
            push,
            suspensions,
            invites,
            federation,
        })
    }

    fn apply(&mut self, writes: &[NodeWrite]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        // Chunk bytes are durable in their files before the records that count them.
        let chunks: Vec<(&BlobId, u32, &[u8])> = writes
            .iter()
            .filter_map(|w| match w {
                NodeWrite::PutChunk(id, index, bytes) => Some((id, *index, bytes.as_slice())),
                _ => None,
            })
            .collect();
        self.chunks.write(&chunks)?;
        let mut batch = rocksdb::WriteBatch::default();
        for w in writes {
            match w {
                NodeWrite::PutAccount(u, rec) => batch.put_cf(
                    self.cf(USERID_ACCOUNT),
                    u.as_bytes(),
                    encode_value(USERID_ACCOUNT, rec)?,
                ),
                NodeWrite::PutMailbox(e) => {
                    let k = schema::mailbox_key(&e.recipient, &e.id);
                    let m = MailboxEntry::of(e);
                    batch.put_cf(
                        self.cf(USERID_ENVELOPEID_MAILBOX),
                        k,
                        encode_value(USERID_ENVELOPEID_MAILBOX, e)?,
                    );
                    batch.put_cf(self.cf(USERID_ENVELOPEID_MAILBOXMETA), k, mailbox_meta(&m)?);
                }
                NodeWrite::DeleteMailbox(u, id) => {
                    let k = schema::mailbox_key(u, id);
                    batch.delete_cf(self.cf(USERID_ENVELOPEID_MAILBOX), k);
                    batch.delete_cf(self.cf(USERID_ENVELOPEID_MAILBOXMETA), k);
                }
                NodeWrite::PutOutbox(rec) => {
                    let k = schema::outbox_key(&rec.to_node, &rec.envelope.id);
                    batch.put_cf(
                        self.cf(NODEID_ENVELOPEID_OUTBOX),
                        &k,
                        encode_value(NODEID_ENVELOPEID_OUTBOX, rec)?,
                    );
                    batch.put_cf(
                        self.cf(NODEID_ENVELOPEID_OUTBOXMETA),
                        &k,
                        outbox_meta(&OutboxEntry::of(rec))?,
                    );
                }
                NodeWrite::DeleteOutbox(node, id) => {
                    let k = schema::outbox_key(node, id);
                    batch.delete_cf(self.cf(NODEID_ENVELOPEID_OUTBOX), &k);
                    batch.delete_cf(self.cf(NODEID_ENVELOPEID_OUTBOXMETA), &k);
                }
                NodeWrite::PutStatus(id, rec) => batch.put_cf(
                    self.cf(ENVELOPEID_STATUS),
                    id.0,
                    encode_value(ENVELOPEID_STATUS, rec)?,
                ),
                NodeWrite::DeleteStatus(id) => batch.delete_cf(self.cf(ENVELOPEID_STATUS), id.0),
                NodeWrite::PutSignedPrekey(u, spk) => batch.put_cf(
                    self.cf(USERID_SIGNEDPREKEY),
                    u.as_bytes(),
                    encode_value(USERID_SIGNEDPREKEY, spk)?,
                ),
                NodeWrite::PutOneTimePrekey(u, k) => batch.put_cf(
                    self.cf(USERID_ONETIMEPREKEY),
                    schema::one_time_prekey_key(u, k),
                    [],
                ),
                NodeWrite::DeleteOneTimePrekey(u, k) => batch.delete_cf(
                    self.cf(USERID_ONETIMEPREKEY),
                    schema::one_time_prekey_key(u, k),
                ),
                NodeWrite::PutBlob(id, rec) => {
                    batch.put_cf(self.cf(BLOBID_BLOB), id.0, encode_value(BLOBID_BLOB, rec)?)
                }
                NodeWrite::PutChunk(..) | NodeWrite::DeleteChunks(_) => {}
                NodeWrite::DeleteBlob(id) => batch.delete_cf(self.cf(BLOBID_BLOB), id.0),
                NodeWrite::PutPush(u, rec) => batch.put_cf(
                    self.cf(USERID_ENDPOINT_PUSH),
                    schema::push_key(
                        u,
                        &hestia_protocol::push::endpoint_id(&rec.subscription.endpoint),
                    ),
                    encode_value(USERID_ENDPOINT_PUSH, rec)?,
                ),
                NodeWrite::DeletePush(u, id) => {
                    batch.delete_cf(self.cf(USERID_ENDPOINT_PUSH), schema::push_key(u, id))
                }
                NodeWrite::DeleteAccount(u) => {
                    batch.delete_cf(self.cf(USERID_ACCOUNT), u.as_bytes());
                    batch.delete_cf(self.cf(USERID_SIGNEDPREKEY), u.as_bytes());
                }
                NodeWrite::PutSuspension(u, rec) => batch.put_cf(
                    self.cf(USERID_SUSPENSION),
                    u.as_bytes(),
                    encode_value(USERID_SUSPENSION, rec)?,
                ),
                NodeWrite::DeleteSuspension(u) => {
                    batch.delete_cf(self.cf(USERID_SUSPENSION), u.as_bytes())
                }
                NodeWrite::PutInvite(h, rec) => batch.put_cf(
                    self.cf(INVITEHASH_INVITE),
                    h,
                    encode_value(INVITEHASH_INVITE, rec)?,
                ),
                NodeWrite::DeleteInvite(h) => batch.delete_cf(self.cf(INVITEHASH_INVITE), h),
                NodeWrite::PutFederation(node, rec) => batch.put_cf(
                    self.cf(NODEID_FEDERATION),
                    node.as_bytes(),
                    encode_value(NODEID_FEDERATION, rec)?,
                ),
                NodeWrite::DeleteFederation(node) => {
                    batch.delete_cf(self.cf(NODEID_FEDERATION), node.as_bytes())
                }
            }
        }
        let wo = crate::synced();
        self.db.write_opt(batch, &wo)?;
        // Files go once their records no longer count them (a crash before: see `open`).
        for w in writes {
            if let NodeWrite::DeleteChunks(id) | NodeWrite::DeleteBlob(id) = w {
                self.chunks.delete(id)?;
            }
        }
        Ok(())
    }

    fn for_each_mailbox(&self, each: &mut dyn FnMut(MailboxEntry)) -> Result<()> {
        // The metadata family only: bodies stay on disk until a fetch reads them.
        let cf = self.cf(USERID_ENVELOPEID_MAILBOXMETA);
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let m: MailboxMeta = decode_value(USERID_ENVELOPEID_MAILBOXMETA, &v)?;
            let (recipient, id) = schema::decode_mailbox_key(&k)
                .ok_or_else(|| corrupt(USERID_ENVELOPEID_MAILBOXMETA))?;
            each(MailboxEntry {
                recipient,
                id,
                expires_at: m.expires_at,
                size: m.size,
            });
        }
        Ok(())
    }

    fn mailbox_envelopes(&self, user: &UserId, ids: &[EnvelopeId]) -> Result<Vec<Envelope>> {
        let cf = self.cf(USERID_ENVELOPEID_MAILBOX);
        let keys = ids.iter().map(|id| (cf, schema::mailbox_key(user, id)));
        let mut out = Vec::with_capacity(ids.len());
        for v in self.db.multi_get_cf(keys) {
            if let Some(v) = v? {
                out.push(decode_value(USERID_ENVELOPEID_MAILBOX, &v)?);
            }
        }
        Ok(out)
    }

    fn outbox_envelopes(&self, node: &str, ids: &[EnvelopeId]) -> Result<Vec<Envelope>> {
        let cf = self.cf(NODEID_ENVELOPEID_OUTBOX);
        let keys = ids.iter().map(|id| (cf, schema::outbox_key(node, id)));
        let mut out = Vec::with_capacity(ids.len());
        for v in self.db.multi_get_cf(keys) {
            if let Some(v) = v? {
                let r: OutboxRecord = decode_value(NODEID_ENVELOPEID_OUTBOX, &v)?;
                out.push(r.envelope);
            }
        }
        Ok(out)
    }

    fn blob_chunk(&self, blob: &BlobId, index: u32) -> Result<Option<Vec<u8>>> {
        let Some(len) = self
            .blob_record(blob)?
            .and_then(|r| r.spec.chunk_len(index))
        else {
            return Ok(None);
        };
        self.chunks.read(blob, index, len)
    }
}

fn mailbox_meta(m: &MailboxEntry) -> Result<Vec<u8>> {
    encode_value(
        USERID_ENVELOPEID_MAILBOXMETA,
        &MailboxMeta {
            expires_at: m.expires_at,
            size: m.size,
        },
    )
}

fn outbox_meta(m: &OutboxEntry) -> Result<Vec<u8>> {
    encode_value(
        NODEID_ENVELOPEID_OUTBOXMETA,
        &OutboxMeta {
            owner: m.owner,
            expires_at: m.expires_at,
            size: m.size,
        },
    )
}

/// The node's migration steps (see [`crate::open_db`]). 3 → 4 writes the metadata families
/// from the bodies held, once; 5 → 6 moves file chunks out of `blobid_index_chunk` into chunk
/// files.
pub(crate) fn migrate(db: &rocksdb::DB, from: u32, chunks: &ChunkFiles) -> Result<()> {
    if from < 4 {
        migrate_to_4(db)?;
    }
    if from < 6 {
        let cf = db.cf_handle(BLOBID_INDEX_CHUNK).expect("created at open");
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let (blob, index) =
                schema::decode_chunk_key(&k).ok_or_else(|| corrupt(BLOBID_INDEX_CHUNK))?;
            chunks.write(&[(&blob, index, &v)])?;
        }
        let mut b = rocksdb::WriteBatch::default();
        b.delete_range_cf(cf, &[0u8; 20][..], &[0xffu8; 21][..]);
        db.write_opt(b, &crate::synced())?;
    }
    Ok(())
}

fn migrate_to_4(db: &rocksdb::DB) -> Result<()> {
    let cf = |n: &str| db.cf_handle(n).expect("created at open");
    let mut b = rocksdb::WriteBatch::default();
    for item in db.iterator_cf(cf(USERID_ENVELOPEID_MAILBOX), rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let e: Envelope = decode_value(USERID_ENVELOPEID_MAILBOX, &v)?;
        b.put_cf(
            cf(USERID_ENVELOPEID_MAILBOXMETA),
            k,
            mailbox_meta(&MailboxEntry::of(&e))?,
        );
    }
    for item in db.iterator_cf(cf(NODEID_ENVELOPEID_OUTBOX), rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let r: OutboxRecord = decode_value(NODEID_ENVELOPEID_OUTBOX, &v)?;
        b.put_cf(
            cf(NODEID_ENVELOPEID_OUTBOXMETA),
            k,
            outbox_meta(&OutboxEntry::of(&r))?,
        );
    }
    let wo = crate::synced();
    Ok(db.write_opt(b, &wo)?)
}

fn corrupt(cf: &'static str) -> crate::StoreError {
    crate::StoreError::Corrupt {
        cf,
        reason: "bad key length".into(),
    }
}

/// The same interface in memory, for unit tests and simulations. A "crash with disk loss" is
/// dropping it; a crash without is keeping it.
#[derive(Default, Clone)]
pub struct MemNodeStore {
    accounts: BTreeMap<UserId, AccountRecord>,
    mailbox: BTreeMap<[u8; 48], Envelope>,
    outbox: BTreeMap<Vec<u8>, OutboxRecord>,
    status: BTreeMap<EnvelopeId, StatusRecord>,
    signed_prekeys: BTreeMap<UserId, SignedPrekey>,
    one_time_prekeys: std::collections::BTreeSet<(UserId, [u8; 32])>,
    blobs: BTreeMap<BlobId, BlobRecord>,
    chunks: BTreeMap<(BlobId, u32), Vec<u8>>,
    push: BTreeMap<[u8; 48], (UserId, PushRecord)>,
    suspensions: BTreeMap<UserId, SuspensionRecord>,
    invites: BTreeMap<[u8; 32], InviteRecord>,
    federation: BTreeMap<String, FederationRecord>,
    /// Number of `apply` calls, so tests can check batching.
    pub batches: u64,
    /// Chunks are kept as their length only and read back as zeros (see
    /// [`MemNodeStore::without_chunk_bytes`]).
    sparse_chunks: bool,
}

impl MemNodeStore {
    /// A store that keeps which chunks it holds but not their bytes, and reads a chunk back as
    /// zeros of its length: for simulations, whose chunks are filler, so that a federation
    /// holding terabytes of files fits in memory. Everything else is kept as usual.
    pub fn without_chunk_bytes() -> MemNodeStore {
        MemNodeStore {
            sparse_chunks: true,
            ..MemNodeStore::default()
        }
    }

    /// Whether this store was made by [`MemNodeStore::without_chunk_bytes`].
    pub fn keeps_chunk_bytes(&self) -> bool {
        !self.sparse_chunks
    }

    fn delete_chunks(&mut self, id: &BlobId) {
        let keys: Vec<(BlobId, u32)> = self
            .chunks
            .range((*id, 0)..=(*id, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.chunks.remove(&k);
        }
    }
}

impl NodeStore for MemNodeStore {
    fn mailbox_envelopes(&self, user: &UserId, ids: &[EnvelopeId]) -> Result<Vec<Envelope>> {
        Ok(ids
            .iter()
            .filter_map(|id| self.mailbox.get(&schema::mailbox_key(user, id)).cloned())
            .collect())
    }

    fn outbox_envelopes(&self, node: &str, ids: &[EnvelopeId]) -> Result<Vec<Envelope>> {
        Ok(ids
            .iter()
            .filter_map(|id| {
                let r = self.outbox.get(&schema::outbox_key(node, id))?;
                Some(r.envelope.clone())
            })
            .collect())
    }

    fn blob_chunk(&self, blob: &BlobId, index: u32) -> Result<Option<Vec<u8>>> {
        let Some(bytes) = self.chunks.get(&(*blob, index)) else {
            return Ok(None);
        };
        if !self.sparse_chunks {
            return Ok(Some(bytes.clone()));
        }
        let len = self
            .blobs
            .get(blob)
            .and_then(|r| r.spec.chunk_len(index))
            .unwrap_or(0);
        Ok(Some(vec![0; len as usize]))
    }

    fn for_each_mailbox(&self, each: &mut dyn FnMut(MailboxEntry)) -> Result<()> {
        self.mailbox
            .values()
            .for_each(|e| each(MailboxEntry::of(e)));
        Ok(())
    }

    fn load(&self) -> Result<NodeSnapshot> {
        Ok(NodeSnapshot {
            accounts: self.accounts.iter().map(|(k, v)| (*k, v.clone())).collect(),
            outbox: self.outbox.values().map(OutboxEntry::of).collect(),
            status: self.status.iter().map(|(k, v)| (*k, v.clone())).collect(),
            signed_prekeys: self
                .signed_prekeys
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            one_time_prekeys: self.one_time_prekeys.iter().copied().collect(),
            blobs: self.blobs.iter().map(|(k, v)| (*k, v.clone())).collect(),
            push: self.push.values().cloned().collect(),
            suspensions: self
                .suspensions
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            invites: self.invites.iter().map(|(k, v)| (*k, v.clone())).collect(),
            federation: self
                .federation
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    fn apply(&mut self, writes: &[NodeWrite]) -> Result<()> {
        self.batches += 1;
        for w in writes {
            match w {
                NodeWrite::PutAccount(u, r) => {
                    self.accounts.insert(*u, r.clone());
                }
                NodeWrite::PutMailbox(e) => {
                    self.mailbox
                        .insert(schema::mailbox_key(&e.recipient, &e.id), e.clone());
                }
                NodeWrite::DeleteMailbox(u, id) => {
                    self.mailbox.remove(&schema::mailbox_key(u, id));
                }
                NodeWrite::PutOutbox(r) => {
                    self.outbox
                        .insert(schema::outbox_key(&r.to_node, &r.envelope.id), r.clone());
                }
                NodeWrite::DeleteOutbox(n, id) => {
                    self.outbox.remove(&schema::outbox_key(n, id));
                }
                NodeWrite::PutStatus(id, r) => {
                    self.status.insert(*id, r.clone());
                }
                NodeWrite::DeleteStatus(id) => {
                    self.status.remove(id);
                }
                NodeWrite::PutSignedPrekey(u, spk) => {
                    self.signed_prekeys.insert(*u, spk.clone());
                }
                NodeWrite::PutOneTimePrekey(u, k) => {
                    self.one_time_prekeys.insert((*u, *k));
                }
                NodeWrite::DeleteOneTimePrekey(u, k) => {
                    self.one_time_prekeys.remove(&(*u, *k));
                }
                NodeWrite::PutBlob(id, r) => {
                    self.blobs.insert(*id, r.clone());
                }
                NodeWrite::PutChunk(id, i, c) => {
                    let bytes = if self.sparse_chunks {
                        Vec::new()
                    } else {
                        c.clone()
                    };
                    self.chunks.insert((*id, *i), bytes);
                }
                NodeWrite::DeleteChunks(id) => self.delete_chunks(id),
                NodeWrite::DeleteBlob(id) => {
                    self.delete_chunks(id);
                    self.blobs.remove(id);
                }
                NodeWrite::PutPush(u, r) => {
                    let id = hestia_protocol::push::endpoint_id(&r.subscription.endpoint);
                    self.push.insert(schema::push_key(u, &id), (*u, r.clone()));
                }
                NodeWrite::DeletePush(u, id) => {
                    self.push.remove(&schema::push_key(u, id));
                }
                NodeWrite::DeleteAccount(u) => {
                    self.accounts.remove(u);
                    self.signed_prekeys.remove(u);
                }
                NodeWrite::PutSuspension(u, r) => {
                    self.suspensions.insert(*u, r.clone());
                }
                NodeWrite::DeleteSuspension(u) => {
                    self.suspensions.remove(u);
                }
                NodeWrite::PutInvite(h, r) => {
                    self.invites.insert(*h, r.clone());
                }
                NodeWrite::DeleteInvite(h) => {
                    self.invites.remove(h);
                }
                NodeWrite::PutFederation(n, r) => {
                    self.federation.insert(n.clone(), r.clone());
                }
                NodeWrite::DeleteFederation(n) => {
                    self.federation.remove(n);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hestia_protocol::wire::DeliveryState;

    fn env(n: u8) -> Envelope {
        Envelope {
            version: 1,
            id: EnvelopeId([n; 16]),
            recipient: UserId([n; 32]),
            expires_at: 99,
            body: vec![n; 10],
        }
    }

    fn mailbox_of(store: &dyn NodeStore) -> Vec<MailboxEntry> {
        let mut out = Vec::new();
        store.for_each_mailbox(&mut |e| out.push(e)).unwrap();
        out
    }

    fn exercise(store: &mut dyn NodeStore) {
        let out = OutboxRecord {
            owner: UserId([9; 32]),
            to_node: "peer".into(),
            envelope: env(2),
            attempts: 1,
        };
        let st = StatusRecord {
            owner: UserId([9; 32]),
            state: DeliveryState::Queued { attempts: 0 },
            expires_at: 5,
        };
        store
            .apply(&[
                NodeWrite::PutAccount(UserId([1; 32]), AccountRecord { created_at: 3 }),
                NodeWrite::PutMailbox(env(1)),
                NodeWrite::PutMailbox(env(3)),
                NodeWrite::PutOutbox(out.clone()),
                NodeWrite::PutStatus(EnvelopeId([2; 16]), st.clone()),
            ])
            .unwrap();
        store
            .apply(&[NodeWrite::DeleteMailbox(
                UserId([3; 32]),
                EnvelopeId([3; 16]),
            )])
            .unwrap();
        let snap = store.load().unwrap();
        assert_eq!(
            snap.accounts,
            vec![(UserId([1; 32]), AccountRecord { created_at: 3 })]
        );
        assert_eq!(mailbox_of(store), vec![MailboxEntry::of(&env(1))]);
        assert_eq!(snap.outbox, vec![OutboxEntry::of(&out)]);
        // Bodies come from the store on demand, in the order asked, the missing left out.
        let ids = [EnvelopeId([3; 16]), EnvelopeId([1; 16])];
        assert_eq!(
            store.mailbox_envelopes(&UserId([1; 32]), &ids).unwrap(),
            vec![env(1)]
        );
        assert_eq!(
            store
                .outbox_envelopes("peer", &[EnvelopeId([2; 16])])
                .unwrap(),
            vec![env(2)]
        );
        assert_eq!(snap.status, vec![(EnvelopeId([2; 16]), st)]);
        store
            .apply(&[NodeWrite::DeleteOutbox("peer".into(), EnvelopeId([2; 16]))])
            .unwrap();
        assert!(store.load().unwrap().outbox.is_empty());
        let spk = SignedPrekey {
            key: [5; 32],
            signature: hestia_protocol::identity::Sig::from_bytes(&[6; 64]),
        };
        let u = UserId([1; 32]);
        store
            .apply(&[
                NodeWrite::PutSignedPrekey(u, spk.clone()),
                NodeWrite::PutOneTimePrekey(u, [7; 32]),
                NodeWrite::PutOneTimePrekey(u, [8; 32]),
            ])
            .unwrap();
        store
            .apply(&[NodeWrite::DeleteOneTimePrekey(u, [7; 32])])
            .unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.signed_prekeys, vec![(u, spk)]);
        assert_eq!(snap.one_time_prekeys, vec![(u, [8; 32])]);

        // Blobs: chunks by index, a range delete of one blob's chunks leaves another's.
        use hestia_protocol::wire::{BlobPhase, BlobSpec};
        let rec = |chunks: u32| BlobRecord {
            owner: u,
            spec: BlobSpec {
                chunks,
                last_chunk_bytes: 100,
                cap_hash: [3; 32],
                expires_at: 500,
            },
            phase: BlobPhase::Uploading,
            held: vec![0; (chunks as usize).div_ceil(8)],
            touched_at: 1,
        };
        let (a, b) = (BlobId([1; 16]), BlobId([2; 16]));
        store
            .apply(&[
                NodeWrite::PutBlob(a, rec(2)),
                NodeWrite::PutChunk(a, 0, vec![1; 40]),
                NodeWrite::PutChunk(a, 1, vec![2; 100]),
                NodeWrite::PutBlob(b, rec(1)),
                NodeWrite::PutChunk(b, 0, vec![3; 100]),
            ])
            .unwrap();
        assert_eq!(store.blob_chunk(&a, 1).unwrap(), Some(vec![2; 100]));
        store.apply(&[NodeWrite::DeleteChunks(a)]).unwrap();
        assert_eq!(store.blob_chunk(&a, 0).unwrap(), None);
        assert_eq!(store.blob_chunk(&b, 0).unwrap(), Some(vec![3; 100]));
        assert_eq!(store.load().unwrap().blobs.len(), 2);
        store.apply(&[NodeWrite::DeleteBlob(a)]).unwrap();
        assert_eq!(store.load().unwrap().blobs, vec![(b, rec(1))]);
    }

    #[test]
    fn a_schema_5_database_moves_its_chunks_into_chunk_files() {
        use hestia_protocol::wire::{BlobPhase, BlobSpec};
        let dir = tempfile::tempdir().unwrap();
        let blob = BlobId([4; 16]);
        let rec = BlobRecord {
            owner: UserId([1; 32]),
            spec: BlobSpec {
                chunks: 2,
                last_chunk_bytes: 50,
                cap_hash: [3; 32],
                expires_at: 500,
            },
            phase: BlobPhase::Complete,
            held: vec![0b11],
            touched_at: 1,
        };
        let full = vec![8u8; hestia_protocol::file::SEALED_CHUNK_BYTES as usize];
        {
            // What a schema 5 node left: the chunks in their column family.
            let mut db = NodeDb::open(dir.path()).unwrap();
            db.apply(&[NodeWrite::PutBlob(blob, rec.clone())]).unwrap();
            let cf = db.cf(BLOBID_INDEX_CHUNK);
            db.db
                .put_cf(cf, schema::chunk_key(&blob, 0), &full)
                .unwrap();
            db.db
                .put_cf(cf, schema::chunk_key(&blob, 1), [9u8; 50])
                .unwrap();
            db.db
                .put_cf(db.cf(META), b"schema_version", 5u32.to_be_bytes())
                .unwrap();
        }
        let db = NodeDb::open(dir.path()).unwrap();
        assert_eq!(db.blob_chunk(&blob, 0).unwrap(), Some(full));
        assert_eq!(db.blob_chunk(&blob, 1).unwrap(), Some(vec![9; 50]));
        let left = db
            .db
            .iterator_cf(db.cf(BLOBID_INDEX_CHUNK), rocksdb::IteratorMode::Start)
            .count();
        assert_eq!(left, 0, "the family is emptied");
        assert!(db.check().unwrap() > 0);
    }

    #[test]
    fn rocksdb_and_memory_stores_agree_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut db = NodeDb::open(dir.path()).unwrap();
            exercise(&mut db);
        }
        let db = NodeDb::open(dir.path()).unwrap();
        assert_eq!(mailbox_of(&db), vec![MailboxEntry::of(&env(1))]);
        assert_eq!(
            db.blob_chunk(&BlobId([2; 16]), 0).unwrap(),
            Some(vec![3; 100])
        );
        // Every stored form the node writes reads back through the records' check.
        assert!(db.check().unwrap() > 3);
        let cf = db.cf(USERID_ENVELOPEID_MAILBOX);
        let k = schema::mailbox_key(&env(1).recipient, &env(1).id);
        db.db.put_cf(cf, k, [1, 2, 3]).unwrap();
        assert!(matches!(
            db.check(),
            Err(crate::StoreError::Corrupt {
                cf: USERID_ENVELOPEID_MAILBOX,
                ..
            })
        ));
        let mut mem = MemNodeStore::default();
        exercise(&mut mem);
        assert_eq!(mem.load().unwrap(), db.load().unwrap());
    }

    #[test]
    fn client_database_is_not_a_node_database() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::client::ClientDb::open(dir.path(), None).unwrap());
        assert!(matches!(
            NodeDb::open(dir.path()),
            Err(crate::StoreError::WrongKind(..))
        ));
    }
}
