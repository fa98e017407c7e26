//! The node database and the interface the relay core's writes go through.

use crate::schema::{self, *};
use crate::{Result, decode_value, encode_value};
use hestia_protocol::Millis;
use hestia_protocol::envelope::{Envelope, EnvelopeId};
use hestia_protocol::identity::UserId;
use hestia_protocol::session::prekeys::SignedPrekey;
use hestia_protocol::wire::DeliveryState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub created_at: Millis,
}

/// An envelope a local user sent, waiting for the recipient's node to accept it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The local user who sent it: only they may ask for its state.
    pub owner: UserId,
    pub to_node: String,
    pub envelope: Envelope,
    pub attempts: u32,
}

/// What the node tells a sender about an envelope it relayed. Kept until the envelope's expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub owner: UserId,
    pub state: DeliveryState,
    pub expires_at: Millis,
}

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
}

/// Everything the relay core needs to resume after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub accounts: Vec<(UserId, AccountRecord)>,
    pub mailbox: Vec<Envelope>,
    pub outbox: Vec<OutboxRecord>,
    pub status: Vec<(EnvelopeId, StatusRecord)>,
    pub signed_prekeys: Vec<(UserId, SignedPrekey)>,
    pub one_time_prekeys: Vec<(UserId, [u8; 32])>,
}

/// Where the relay core's state lives. `apply` is atomic and durable when it returns `Ok`:
/// after a crash either all of a batch is there or none of it.
pub trait NodeStore {
    fn load(&self) -> Result<NodeSnapshot>;
    fn apply(&mut self, writes: &[NodeWrite]) -> Result<()>;
}

/// The RocksDB node database.
pub struct NodeDb {
    db: rocksdb::DB,
}

impl NodeDb {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(NodeDb {
            // Nothing of the node's changed form in schema 3 (a client migration).
            db: crate::open_db(path, NODE_CFS, "node", |_, _| Ok(()))?,
        })
    }

    /// Opens a database that a running node holds, to read it (`hestia node inspect`).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let opts = rocksdb::Options::default();
        let db = rocksdb::DB::open_cf_for_read_only(&opts, path, NODE_CFS.iter().copied(), false)
            .map_err(|source| crate::StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(NodeDb { db })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    /// The node's libp2p key, in libp2p's protobuf encoding.
    pub fn node_key(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(META), b"node_key")?)
    }

    pub fn set_node_key(&self, key: &[u8]) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        Ok(self.db.put_cf_opt(self.cf(META), b"node_key", key, &wo)?)
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
        let mailbox = self
            .scan(USERID_ENVELOPEID_MAILBOX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let outbox = self
            .scan(NODEID_ENVELOPEID_OUTBOX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
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
        Ok(NodeSnapshot {
            accounts,
            mailbox,
            outbox,
            status,
            signed_prekeys,
            one_time_prekeys,
        })
    }

    fn apply(&mut self, writes: &[NodeWrite]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = rocksdb::WriteBatch::default();
        for w in writes {
            match w {
                NodeWrite::PutAccount(u, rec) => batch.put_cf(
                    self.cf(USERID_ACCOUNT),
                    u.as_bytes(),
                    encode_value(USERID_ACCOUNT, rec)?,
                ),
                NodeWrite::PutMailbox(e) => batch.put_cf(
                    self.cf(USERID_ENVELOPEID_MAILBOX),
                    schema::mailbox_key(&e.recipient, &e.id),
                    encode_value(USERID_ENVELOPEID_MAILBOX, e)?,
                ),
                NodeWrite::DeleteMailbox(u, id) => batch.delete_cf(
                    self.cf(USERID_ENVELOPEID_MAILBOX),
                    schema::mailbox_key(u, id),
                ),
                NodeWrite::PutOutbox(rec) => batch.put_cf(
                    self.cf(NODEID_ENVELOPEID_OUTBOX),
                    schema::outbox_key(&rec.to_node, &rec.envelope.id),
                    encode_value(NODEID_ENVELOPEID_OUTBOX, rec)?,
                ),
                NodeWrite::DeleteOutbox(node, id) => batch.delete_cf(
                    self.cf(NODEID_ENVELOPEID_OUTBOX),
                    schema::outbox_key(node, id),
                ),
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
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        Ok(self.db.write_opt(batch, &wo)?)
    }
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
    /// Number of `apply` calls, so tests can check batching.
    pub batches: u64,
}

impl NodeStore for MemNodeStore {
    fn load(&self) -> Result<NodeSnapshot> {
        Ok(NodeSnapshot {
            accounts: self.accounts.iter().map(|(k, v)| (*k, v.clone())).collect(),
            mailbox: self.mailbox.values().cloned().collect(),
            outbox: self.outbox.values().cloned().collect(),
            status: self.status.iter().map(|(k, v)| (*k, v.clone())).collect(),
            signed_prekeys: self
                .signed_prekeys
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            one_time_prekeys: self.one_time_prekeys.iter().copied().collect(),
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
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: u8) -> Envelope {
        Envelope {
            version: 1,
            id: EnvelopeId([n; 16]),
            recipient: UserId([n; 32]),
            expires_at: 99,
            body: vec![n; 10],
        }
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
        assert_eq!(snap.mailbox, vec![env(1)]);
        assert_eq!(snap.outbox, vec![out]);
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
    }

    #[test]
    fn rocksdb_and_memory_stores_agree_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut db = NodeDb::open(dir.path()).unwrap();
            exercise(&mut db);
        }
        let db = NodeDb::open(dir.path()).unwrap();
        assert_eq!(db.load().unwrap().mailbox, vec![env(1)]);
        let mut mem = MemNodeStore::default();
        exercise(&mut mem);
        assert_eq!(mem.load().unwrap(), db.load().unwrap());
    }

    #[test]
    fn client_database_is_not_a_node_database() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::client::ClientDb::open(dir.path()).unwrap());
        assert!(matches!(
            NodeDb::open(dir.path()),
            Err(crate::StoreError::WrongKind(..))
        ));
    }
}
