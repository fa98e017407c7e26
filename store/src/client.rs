//! The client database on a user's device: identity, contacts with pinned keys, history.
//! History lives here and only here; the node never holds it.

use crate::records::VaultRecord;
pub use crate::records::{
    CallOutcome, Contact, Direction, FileState, MessageState, Origin, PendingReceipts, StoredFile,
    StoredIdentity, StoredMessage, StoredUpload, Trust, UnsentEnvelope,
};
use crate::schema::*;
use crate::vault::{KdfParams, Vault};
use crate::{Result, StoreError, decode_value, encode_value};
use hestia_protocol::envelope::EnvelopeId;
use hestia_protocol::file::BlobId;
use hestia_protocol::identity::{Address, UserId};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// The stored forms of the sessions with one contact, newest first. Secret: zeroized on drop.
pub type StoredSessions = Vec<zeroize::Zeroizing<Vec<u8>>>;

/// One change in a [`ClientDb::commit`] batch.
pub enum ClientWrite {
    /// A new message (the caller has checked it is not stored yet).
    Message(StoredMessage),
    /// Replace a stored message (same envelope id); ignored if there is none.
    UpdateMessage(StoredMessage),
    /// Replace the sessions with this user (stored forms, newest first) and the number of
    /// skipped message keys they hold.
    Sessions(UserId, StoredSessions, u32),
    /// Replace the prekey secrets (stored form).
    Prekeys(zeroize::Zeroizing<Vec<u8>>),
    Contact(Contact),
    /// Delete a contact (by local name); its history stays.
    RemoveContact(String),
    /// Delete the sessions with this user.
    RemoveSessions(UserId),
    /// Refuse everything this key sends from now on (`contact reject`).
    Block(UserId),
    /// Replace the stored messages' shown contact name (after a merge).
    RenamePeer {
        user: UserId,
        name: String,
    },
    /// Replace the pending delivery receipts for this user (none: delete them).
    Receipts(UserId, Option<PendingReceipts>),
    /// Put a file sent or received, under the id of its message.
    File(EnvelopeId, StoredFile),
    /// Put an upload's record (none: it is done or abandoned, delete it).
    Upload(BlobId, Option<StoredUpload>),
    /// Keep a sealed envelope until the home node answers for it (none: it answered).
    Unsent(EnvelopeId, Option<UnsentEnvelope>),
}

pub struct ClientDb {
    db: rocksdb::DB,
    next_seq: u64,
    /// The unlocked vault when the data is encrypted at rest ([`crate::vault`]).
    vault: Option<Vault>,
}

/// A stored value in clear, zeroized on drop.
type Plain = Zeroizing<Vec<u8>>;

/// The families whose keys stay in clear under a vault: sequence numbers, for history's order.
fn key_in_clear(cf: &str) -> bool {
    cf == SEQ_MESSAGE
}

impl ClientDb {
    /// Opens (or creates) the device database. If its data is encrypted, `passphrase` unlocks
    /// it ([`StoreError::Locked`] without one, [`StoreError::WrongPassphrase`] if it does not
    /// open); a passphrase given for a database in clear is not used.
    pub fn open(path: &Path, passphrase: Option<&[u8]>) -> Result<Self> {
        let db = crate::open_db(
            path,
            CLIENT_CFS,
            "client",
            &crate::tuning::DbTuning::default(),
            migrate,
        )?;

        let meta = db.cf_handle(META).expect("created at open");
        let vault = match db.get_cf(&meta, b"vault")? {
            Some(v) => {
                let record: VaultRecord = decode_value(META, &v)?;
                let pass = passphrase.ok_or(StoreError::Locked)?;
                Some(Vault::unlock(&record, pass)?)
            }
            None => None,
        };
        let next_seq = {
            let cf = db.cf_handle(SEQ_MESSAGE).expect("created at open");
            let mut it = db.iterator_cf(&cf, rocksdb::IteratorMode::End);
            match it.next() {
                Some(item) => decode_seq(&item?.0).map_or(0, |s| s + 1),
                None => 0,
            }
        };
        Ok(ClientDb {
            db,
            next_seq,
            vault,
        })
    }

    /// Whether this device's data is encrypted at rest, and with which key derivation.
    pub fn encryption(&self) -> Result<Option<KdfParams>> {
        match self.db.get_cf(self.cf(META), b"vault")? {
            Some(v) => Ok(Some(decode_value::<VaultRecord>(META, &v)?.kdf)),
            None => Ok(None),
        }
    }

    /// Encrypts everything stored so far under `passphrase`, in one atomic batch, and compacts
    /// the database so no file still holds the entries in clear. (Blocks the file system freed
    /// are not overwritten: a device encrypted from its creation never wrote them.)
    pub fn encrypt(&mut self, passphrase: &[u8], kdf: KdfParams) -> Result<()> {
        if self.vault.is_some() {
            return Err(StoreError::AlreadyEncrypted);
        }
        let (vault, record) = Vault::create(&mut rand::rng(), passphrase, kdf)?;
        let mut b = rocksdb::WriteBatch::default();
        for name in CLIENT_CFS.iter().filter(|n| **n != META) {
            let cf = self.cf(name);
            for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item?;
                let stored = if key_in_clear(name) {
                    k.to_vec()
                } else {
                    b.delete_cf(cf, &k);
                    vault.blind_key(name, &k)
                };
                let mut v = v;
                b.put_cf(cf, &stored, vault.seal(name, &stored, &k, &v));
                v.zeroize();
            }
        }
        b.put_cf(self.cf(META), b"vault", encode_value(META, &record)?);
        self.db.write_opt(b, &crate::synced())?;
        self.vault = Some(vault);
        self.compact()
    }

    /// Wraps the data key under a new passphrase (the old one unlocked this database).
    pub fn change_passphrase(&mut self, passphrase: &[u8], kdf: KdfParams) -> Result<()> {
        let vault = self.vault.as_ref().ok_or(StoreError::NotEncrypted)?;
        let record = vault.wrap(&mut rand::rng(), passphrase, kdf)?;
        self.put_synced(META, b"vault", &encode_value(META, &record)?)?;
        self.compact()
    }

    /// Rewrites every file so that overwritten and deleted entries (the clear ones after
    /// [`ClientDb::encrypt`], the old wrapped key after a passphrase change) are gone from
    /// them, and the write-ahead log that held them is retired.
    fn compact(&self) -> Result<()> {
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        // `meta` last: its flush (it always holds a fresh vault record here) is the last change,
        // so the last MANIFEST starts from tables that are all rewritten already.
        let order = CLIENT_CFS.iter().filter(|n| **n != META).chain([&META]);
        for name in order {
            self.db.flush_cf(self.cf(name))?;
            self.db
                .compact_range_cf_opt(self.cf(name), None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }

    /// Decodes every stored entry ([`crate::records::check`]); the number of entries.
    pub fn check(&self) -> Result<u64> {
        let mut n = 0;
        for name in CLIENT_CFS {
            for item in self.scan(name) {
                let (k, v) = item?;
                crate::records::check(name, &k, &v)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    /// The stored form of `key` in `cf`: blinded under a vault (but for `meta` and history).
    fn stored_key(&self, cf: &str, key: &[u8]) -> Vec<u8> {
        match &self.vault {
            Some(v) if cf != META && !key_in_clear(cf) => v.blind_key(cf, key),
            _ => key.to_vec(),
        }
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Plain>> {
        let stored = self.stored_key(cf, key);
        let Some(v) = self.db.get_cf(self.cf(cf), &stored)? else {
            return Ok(None);
        };
        match &self.vault {
            Some(vault) if cf != META => Ok(Some(vault.open(cf, &stored, &v)?.1)),
            _ => Ok(Some(Zeroizing::new(v))),
        }
    }

    fn put(&self, b: &mut rocksdb::WriteBatch, cf: &'static str, key: &[u8], value: &[u8]) {
        let stored = self.stored_key(cf, key);
        match &self.vault {
            Some(vault) if cf != META => {
                b.put_cf(self.cf(cf), &stored, vault.seal(cf, &stored, key, value))
            }
            _ => b.put_cf(self.cf(cf), &stored, value),
        }
    }

    fn delete(&self, b: &mut rocksdb::WriteBatch, cf: &'static str, key: &[u8]) {
        b.delete_cf(self.cf(cf), self.stored_key(cf, key));
    }

    /// Every entry of `cf` in stored order: its real key and its value in clear.
    fn scan<'a>(&'a self, cf: &'static str) -> impl Iterator<Item = Result<(Vec<u8>, Plain)>> + 'a {
        self.db
            .iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start)
            .map(move |item| {
                let (k, v) = item?;
                match &self.vault {
                    Some(vault) if cf != META => vault.open(cf, &k, &v),
                    _ => Ok((k.to_vec(), Zeroizing::new(v.to_vec()))),
                }
            })
    }

    fn write(&self, b: rocksdb::WriteBatch, sync: bool) -> Result<()> {
        if sync {
            Ok(self.db.write_opt(b, &crate::synced())?)
        } else {
            Ok(self.db.write(b)?)
        }
    }

    fn put_synced(&self, cf: &'static str, k: &[u8], v: &[u8]) -> Result<()> {
        let mut b = rocksdb::WriteBatch::default();
        self.put(&mut b, cf, k, v);
        self.write(b, true)
    }

    fn decode_scan<T: serde::de::DeserializeOwned>(&self, cf: &'static str) -> Result<Vec<T>> {
        self.scan(cf)
            .map(|item| decode_value(cf, &item?.1))
            .collect()
    }

    fn decode_get<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        self.get(cf, key)?.map(|v| decode_value(cf, &v)).transpose()
    }

    pub fn identity(&self) -> Result<Option<StoredIdentity>> {
        self.decode_get(KEY_IDENTITY, b"identity")
    }

    pub fn set_identity(&self, id: &StoredIdentity) -> Result<()> {
        let v = Zeroizing::new(encode_value(KEY_IDENTITY, id)?);
        self.put_synced(KEY_IDENTITY, b"identity", &v)
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let mut out: Vec<Contact> = self.decode_scan(NAME_CONTACT)?;
        // Blinded keys have no order: sort as the names did in clear.
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(out)
    }

    pub fn contact(&self, name: &str) -> Result<Option<Contact>> {
        self.decode_get(NAME_CONTACT, name.as_bytes())
    }

    pub fn put_contact(&self, c: &Contact) -> Result<()> {
        self.put_synced(
            NAME_CONTACT,
            c.name.as_bytes(),
            &encode_value(NAME_CONTACT, c)?,
        )
    }

    /// Whether the user rejected this key (`contact reject`): its envelopes are dropped unread.
    pub fn is_blocked(&self, user: &UserId) -> Result<bool> {
        Ok(self.get(USERID_BLOCKED, user.as_bytes())?.is_some())
    }

    /// The delivery receipts owed to `user`, if any.
    pub fn receipts(&self, user: &UserId) -> Result<Option<PendingReceipts>> {
        self.decode_get(USERID_RECEIPTS, user.as_bytes())
    }

    /// Every contact's pending delivery receipts.
    pub fn pending_receipts(&self) -> Result<Vec<(UserId, PendingReceipts)>> {
        self.scan(USERID_RECEIPTS)
            .map(|item| {
                let (k, v) = item?;
                Ok((
                    user_key(USERID_RECEIPTS, &k)?,
                    decode_value(USERID_RECEIPTS, &v)?,
                ))
            })
            .collect()
    }

    /// The file carried by this message, if any.
    pub fn file(&self, id: &EnvelopeId) -> Result<Option<StoredFile>> {
        self.decode_get(ENVELOPEID_FILE, &id.0)
    }

    /// Every file sent or received, by message id.
    pub fn files(&self) -> Result<Vec<(EnvelopeId, StoredFile)>> {
        let mut out = Vec::new();
        for item in self.scan(ENVELOPEID_FILE) {
            let (k, v) = item?;
            let id: [u8; 16] = k
                .as_slice()
                .try_into()
                .map_err(|_| crate::StoreError::Corrupt {
                    cf: ENVELOPEID_FILE,
                    reason: "bad key length".into(),
                })?;
            out.push((EnvelopeId(id), decode_value(ENVELOPEID_FILE, &v)?));
        }
        out.sort_by_key(|(id, _)| id.0);
        Ok(out)
    }

    /// Envelopes the home node has not acknowledged, oldest first (by when they were sealed).
    pub fn unsent(&self) -> Result<Vec<UnsentEnvelope>> {
        let mut out: Vec<UnsentEnvelope> = self.decode_scan(ENVELOPEID_UNSENT)?;
        let seq = |u: &UnsentEnvelope| self.message(&u.envelope.id).ok().flatten().map(|m| m.0);
        out.sort_by_cached_key(seq);
        Ok(out)
    }

    /// The home node answered for these envelopes: forget them, and record the states it gave,
    /// without waiting for the disk (like [`ClientDb::set_state_unsynced`]: a crash may send one
    /// again, and the node answers `Duplicate`).
    pub fn settle_unsent(&self, answered: &[(EnvelopeId, MessageState)]) -> Result<()> {
        let mut b = rocksdb::WriteBatch::default();
        for (id, state) in answered {
            self.delete(&mut b, ENVELOPEID_UNSENT, &id.0);
            if let Some((seq, mut m)) = self.message(id)?
                && m.state != *state
            {
                m.state = state.clone();
                self.put(
                    &mut b,
                    SEQ_MESSAGE,
                    &seq_key(seq),
                    &encode_value(SEQ_MESSAGE, &m)?,
                );
            }
        }
        self.write(b, false)
    }

    /// Every upload begun and not yet announced.
    pub fn uploads(&self) -> Result<Vec<StoredUpload>> {
        self.decode_scan(BLOBID_UPLOAD)
    }

    /// A stored setting's value, if it was ever set.
    pub fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get(NAME_SETTING, name.as_bytes())?.map(|v| v.to_vec()))
    }

    pub fn set_setting(&self, name: &str, value: &[u8]) -> Result<()> {
        self.put_synced(NAME_SETTING, name.as_bytes(), value)
    }

    /// Stores a message unless one with the same envelope id is already stored (dedupe).
    /// Returns whether it was new. Synced: the caller acknowledges to the node after this.
    pub fn record_message(&mut self, m: &StoredMessage) -> Result<bool> {
        if self.has_message(&m.envelope_id)? {
            return Ok(false);
        }
        let mut b = rocksdb::WriteBatch::default();
        self.put_message(&mut b, self.next_seq, m)?;
        self.write(b, true)?;
        self.next_seq += 1;
        Ok(true)
    }

    /// A new message under `seq`, and its envelope id → `seq` entry.
    fn put_message(&self, b: &mut rocksdb::WriteBatch, seq: u64, m: &StoredMessage) -> Result<()> {
        self.put(
            b,
            SEQ_MESSAGE,
            &seq_key(seq),
            &encode_value(SEQ_MESSAGE, m)?,
        );
        self.put(b, ENVELOPEID_SEQ, &m.envelope_id.0, &seq_key(seq));
        Ok(())
    }

    pub fn message(&self, id: &EnvelopeId) -> Result<Option<(u64, StoredMessage)>> {
        let Some(seq) = self.get(ENVELOPEID_SEQ, &id.0)? else {
            return Ok(None);
        };
        let seq_n = decode_seq(&seq).ok_or(crate::StoreError::Corrupt {
            cf: ENVELOPEID_SEQ,
            reason: "bad sequence".into(),
        })?;
        Ok(self
            .decode_get(SEQ_MESSAGE, &seq)?
            .map(|m: StoredMessage| (seq_n, m)))
    }

    pub fn set_state(&self, id: &EnvelopeId, state: MessageState) -> Result<bool> {
        self.put_state(id, state, true)
    }

    /// [`ClientDb::set_state`] without waiting for the disk: for a state the node can tell
    /// again (what it answered to a send; `status` asks it). A crash may lose it, never
    /// anything synced before or after it: the log is written in order.
    pub fn set_state_unsynced(&self, id: &EnvelopeId, state: MessageState) -> Result<bool> {
        self.put_state(id, state, false)
    }

    fn put_state(&self, id: &EnvelopeId, state: MessageState, sync: bool) -> Result<bool> {
        let Some((seq, mut m)) = self.message(id)? else {
            return Ok(false);
        };
        if m.state == state {
            return Ok(false);
        }
        m.state = state;
        let mut b = rocksdb::WriteBatch::default();
        self.put(
            &mut b,
            SEQ_MESSAGE,
            &seq_key(seq),
            &encode_value(SEQ_MESSAGE, &m)?,
        );
        self.write(b, sync)?;
        Ok(true)
    }

    /// Whether a message with this envelope id is stored (incoming dedupe before decrypting:
    /// a ratchet refuses a message it has already decrypted).
    pub fn has_message(&self, id: &EnvelopeId) -> Result<bool> {
        Ok(self
            .db
            .get_cf(
                self.cf(ENVELOPEID_SEQ),
                self.stored_key(ENVELOPEID_SEQ, &id.0),
            )?
            .is_some())
    }

    /// The prekey secrets' stored form, if any.
    pub fn prekeys(&self) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        self.get(KEY_IDENTITY, b"prekeys")
    }

    /// The stored sessions with `user`, newest first.
    pub fn sessions(&self, user: &UserId) -> Result<StoredSessions> {
        let Some(v) = self.get(USERID_SESSIONS, user.as_bytes())? else {
            return Ok(Vec::new());
        };
        decode_sessions(&v)
    }

    /// Skipped message keys held per remote user (as last stored with their sessions).
    pub fn skipped_counts(&self) -> Result<Vec<(UserId, u32)>> {
        self.scan(USERID_SKIPPED)
            .map(|item| {
                let (k, v) = item?;
                let n = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| crate::StoreError::Corrupt {
                        cf: USERID_SKIPPED,
                        reason: "bad count".into(),
                    })?;
                Ok((user_key(USERID_SKIPPED, &k)?, n))
            })
            .collect()
    }

    /// The remote users this device holds sessions with.
    pub fn session_users(&self) -> Result<Vec<UserId>> {
        self.scan(USERID_SESSIONS)
            .map(|item| user_key(USERID_SESSIONS, &item?.0))
            .collect()
    }

    /// Every stored session, by remote user (for the device-wide bound on skipped keys).
    pub fn all_sessions(&self) -> Result<Vec<(UserId, StoredSessions)>> {
        self.scan(USERID_SESSIONS)
            .map(|item| {
                let (k, v) = item?;
                Ok((user_key(USERID_SESSIONS, &k)?, decode_sessions(&v)?))
            })
            .collect()
    }

    /// Applies these changes atomically and durably: a received message with the session state
    /// that decrypted it, a sent message with the session state that encrypted it. After a crash
    /// either both are there or neither is, so no message key is used twice or lost.
    pub fn commit(&mut self, writes: &[ClientWrite]) -> Result<()> {
        let mut b = rocksdb::WriteBatch::default();
        let mut seq = self.next_seq;
        for w in writes {
            match w {
                ClientWrite::Message(m) => {
                    self.put_message(&mut b, seq, m)?;
                    seq += 1;
                }
                ClientWrite::UpdateMessage(m) => {
                    if let Some((old_seq, _)) = self.message(&m.envelope_id)? {
                        self.put(
                            &mut b,
                            SEQ_MESSAGE,
                            &seq_key(old_seq),
                            &encode_value(SEQ_MESSAGE, m)?,
                        );
                    }
                }
                ClientWrite::Sessions(user, sessions, skipped) => {
                    let plain: Vec<&[u8]> = sessions.iter().map(|s| s.as_slice()).collect();
                    let v = Zeroizing::new(encode_value(USERID_SESSIONS, &plain)?);
                    self.put(&mut b, USERID_SESSIONS, user.as_bytes(), &v);
                    self.put(
                        &mut b,
                        USERID_SKIPPED,
                        user.as_bytes(),
                        &skipped.to_be_bytes(),
                    );
                }
                ClientWrite::Prekeys(bytes) => {
                    self.put(&mut b, KEY_IDENTITY, b"prekeys", bytes.as_slice());
                }
                ClientWrite::Contact(c) => {
                    self.put(
                        &mut b,
                        NAME_CONTACT,
                        c.name.as_bytes(),
                        &encode_value(NAME_CONTACT, c)?,
                    );
                }
                ClientWrite::RemoveContact(name) => {
                    self.delete(&mut b, NAME_CONTACT, name.as_bytes());
                }
                ClientWrite::RemoveSessions(user) => {
                    self.delete(&mut b, USERID_SESSIONS, user.as_bytes());
                    self.delete(&mut b, USERID_SKIPPED, user.as_bytes());
                }
                ClientWrite::Block(user) => {
                    self.put(&mut b, USERID_BLOCKED, user.as_bytes(), &[]);
                }
                ClientWrite::RenamePeer { user, name } => {
                    for item in self.scan(SEQ_MESSAGE) {
                        let (k, v) = item?;
                        let mut m: StoredMessage = decode_value(SEQ_MESSAGE, &v)?;
                        if m.peer == *user && m.peer_name != *name {
                            m.peer_name = name.clone();
                            self.put(&mut b, SEQ_MESSAGE, &k, &encode_value(SEQ_MESSAGE, &m)?);
                        }
                    }
                }
                ClientWrite::File(id, f) => {
                    let v = Zeroizing::new(encode_value(ENVELOPEID_FILE, f)?);
                    self.put(&mut b, ENVELOPEID_FILE, &id.0, &v);
                }
                ClientWrite::Upload(blob, Some(u)) => {
                    let v = Zeroizing::new(encode_value(BLOBID_UPLOAD, u)?);
                    self.put(&mut b, BLOBID_UPLOAD, &blob.0, &v);
                }
                ClientWrite::Upload(blob, None) => {
                    self.delete(&mut b, BLOBID_UPLOAD, &blob.0);
                }
                ClientWrite::Unsent(id, Some(u)) => {
                    self.put(
                        &mut b,
                        ENVELOPEID_UNSENT,
                        &id.0,
                        &encode_value(ENVELOPEID_UNSENT, u)?,
                    );
                }
                ClientWrite::Unsent(id, None) => self.delete(&mut b, ENVELOPEID_UNSENT, &id.0),
                ClientWrite::Receipts(user, Some(r)) => {
                    self.put(
                        &mut b,
                        USERID_RECEIPTS,
                        user.as_bytes(),
                        &encode_value(USERID_RECEIPTS, r)?,
                    );
                }
                ClientWrite::Receipts(user, None) => {
                    self.delete(&mut b, USERID_RECEIPTS, user.as_bytes());
                }
            }
        }
        self.write(b, true)?;
        self.next_seq = seq;
        Ok(())
    }

    /// All messages in the order they were recorded.
    pub fn messages(&self) -> Result<Vec<StoredMessage>> {
        self.decode_scan(SEQ_MESSAGE)
    }
}

fn decode_sessions(v: &[u8]) -> Result<StoredSessions> {
    let list: Vec<Vec<u8>> = decode_value(USERID_SESSIONS, v)?;
    Ok(list.into_iter().map(zeroize::Zeroizing::new).collect())
}

fn user_key(cf: &'static str, k: &[u8]) -> Result<UserId> {
    let user: [u8; 32] = k.try_into().map_err(|_| crate::StoreError::Corrupt {
        cf,
        reason: "bad key length".into(),
    })?;
    Ok(UserId(user))
}

/// The client's migration steps (see [`crate::open_db`]).
fn migrate(db: &rocksdb::DB, from: u32) -> Result<()> {
    if from < 3 {
        v2::contacts_to_v3(db)?;
    }
    // 3 → 4 changed node families only; 6 → 7 only added a variant.
    Ok(())
}

/// Schema 2's contact form and its one-step migration.
mod v2 {
    use super::*;
    use crate::records::v2::{Contact, Trust};

    /// Schema 2 let a message re-pin a contact (unverified) or mark it `Changed` (verified,
    /// messages held). Schema 3 keeps a contact on its key: a `Changed` contact goes back to
    /// its verified key, and the key that claimed it becomes a contact of its own, claiming
    /// that name, with its held messages shown under it. (A re-pin that already happened
    /// cannot be told from a first use and stays as it is.)
    pub(super) fn contacts_to_v3(db: &rocksdb::DB) -> Result<()> {
        let cf = |n: &str| db.cf_handle(n).expect("created at open");
        let mut b = rocksdb::WriteBatch::default();
        let mut claimants = Vec::new();
        for item in db.iterator_cf(cf(NAME_CONTACT), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let old: Contact = decode_value(NAME_CONTACT, &v)?;
            let (trust, claimant) = match old.trust {
                Trust::Unverified => (super::Trust::Unverified, None),
                Trust::Verified => (super::Trust::Verified, None),
                Trust::Changed { new_key } => (super::Trust::Verified, Some(new_key)),
            };
            // Contacts the user has lived with: not requests.
            let origin = Origin::Accepted;
            let new = super::Contact {
                name: old.name.clone(),
                handle: old.handle,
                address: old.address.clone(),
                trust,
                added_at: old.added_at,
                origin,
                claims: None,
                reset_asked_at: None,
            };
            b.put_cf(cf(NAME_CONTACT), k, encode_value(NAME_CONTACT, &new)?);
            if let Some(key) = claimant {
                let name = format!("{}-{}", old.name, &key.to_hex()[..8]);
                claimants.push((key, name.clone()));
                let c = super::Contact {
                    name: name.clone(),
                    handle: Some(old.name.clone()),
                    address: Address {
                        user: key,
                        node: old.address.node.clone(),
                    },
                    trust: super::Trust::Unverified,
                    added_at: old.added_at,
                    origin: Origin::Request,
                    claims: Some(old.name),
                    reset_asked_at: None,
                };
                b.put_cf(
                    cf(NAME_CONTACT),
                    name.as_bytes(),
                    encode_value(NAME_CONTACT, &c)?,
                );
            }
        }
        if !claimants.is_empty() {
            for item in db.iterator_cf(cf(SEQ_MESSAGE), rocksdb::IteratorMode::Start) {
                let (k, v) = item?;
                let mut m: StoredMessage = decode_value(SEQ_MESSAGE, &v)?;
                if let Some((_, name)) = claimants.iter().find(|(u, _)| *u == m.peer) {
                    m.peer_name = name.clone();
                    if m.state == MessageState::HeldKeyChanged {
                        m.state = MessageState::Received;
                    }
                    b.put_cf(cf(SEQ_MESSAGE), k, encode_value(SEQ_MESSAGE, &m)?);
                }
            }
        }
        let wo = crate::synced();
        Ok(db.write_opt(b, &wo)?)
    }

    #[cfg(test)]
    pub(super) fn write_v2_contact(
        db: &rocksdb::DB,
        name: &str,
        user: UserId,
        changed_to: Option<UserId>,
    ) {
        use hestia_protocol::Millis;
        use serde::Serialize;
        #[derive(Serialize)]
        enum TrustOut {
            #[allow(dead_code)]
            Unverified,
            Verified,
            Changed {
                new_key: UserId,
            },
        }
        #[derive(Serialize)]
        struct ContactOut {
            name: String,
            handle: Option<String>,
            address: Address,
            trust: TrustOut,
            added_at: Millis,
        }
        let c = ContactOut {
            name: name.into(),
            handle: Some(name.into()),
            address: Address {
                user,
                node: "12D3KooW".into(),
            },
            trust: match changed_to {
                Some(new_key) => TrustOut::Changed { new_key },
                None => TrustOut::Verified,
            },
            added_at: 1,
        };
        let cf = db.cf_handle(NAME_CONTACT).unwrap();
        db.put_cf(
            &cf,
            name.as_bytes(),
            encode_value(NAME_CONTACT, &c).unwrap(),
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8) -> StoredMessage {
        StoredMessage {
            envelope_id: EnvelopeId([n; 16]),
            direction: Direction::Incoming,
            peer: UserId([1; 32]),
            peer_node: "node".into(),
            peer_name: "bob".into(),
            text: format!("m{n}"),
            at: n as u64,
            expires_at: 100,
            state: MessageState::Received,
        }
    }

    #[test]
    fn history_dedupes_and_keeps_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut db = ClientDb::open(dir.path(), None).unwrap();
            assert!(db.record_message(&msg(1)).unwrap());
            assert!(!db.record_message(&msg(1)).unwrap());
            assert!(db.record_message(&msg(2)).unwrap());
        }
        let mut db = ClientDb::open(dir.path(), None).unwrap();
        assert!(db.record_message(&msg(3)).unwrap());
        let texts: Vec<_> = db.messages().unwrap().into_iter().map(|m| m.text).collect();
        assert_eq!(texts, ["m1", "m2", "m3"]);
        // meta (2), three messages and their three id → seq entries.
        assert_eq!(db.check().unwrap(), 8);
        assert!(
            db.set_state(&EnvelopeId([2; 16]), MessageState::HeldKeyChanged)
                .unwrap()
        );
        assert_eq!(
            db.message(&EnvelopeId([2; 16])).unwrap().unwrap().1.state,
            MessageState::HeldKeyChanged
        );
    }

    #[test]
    fn schema_2_key_change_becomes_a_separate_claiming_contact() {
        let dir = tempfile::tempdir().unwrap();
        let (bob, mallory) = (UserId([1; 32]), UserId([9; 32]));
        {
            let mut db = ClientDb::open(dir.path(), None).unwrap();
            v2::write_v2_contact(&db.db, "bob", bob, Some(mallory));
            let mut held = msg(1);
            held.peer = mallory;
            held.state = MessageState::HeldKeyChanged;
            assert!(db.record_message(&held).unwrap());
            let meta = db.db.cf_handle(META).unwrap();
            db.db
                .put_cf(&meta, b"schema_version", 2u32.to_be_bytes())
                .unwrap();
        }
        let db = ClientDb::open(dir.path(), None).unwrap();
        let bob_c = db.contact("bob").unwrap().unwrap();
        assert_eq!(bob_c.address.user, bob, "the verified key stays");
        assert_eq!(bob_c.trust, Trust::Verified);
        let name = format!("bob-{}", &mallory.to_hex()[..8]);
        let claimant = db.contact(&name).unwrap().unwrap();
        assert_eq!(claimant.address.user, mallory);
        assert_eq!(claimant.claims.as_deref(), Some("bob"));
        assert_eq!(claimant.trust, Trust::Unverified);
        let m = &db.messages().unwrap()[0];
        assert_eq!(
            (m.peer_name.as_str(), &m.state),
            (name.as_str(), &MessageState::Received)
        );
    }

    #[test]
    fn contact_writes_block_remove_and_rename() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ClientDb::open(dir.path(), None).unwrap();
        let u = UserId([1; 32]);
        assert!(db.record_message(&msg(1)).unwrap());
        db.commit(&[
            ClientWrite::Block(UserId([2; 32])),
            ClientWrite::RenamePeer {
                user: u,
                name: "robert".into(),
            },
            ClientWrite::Receipts(
                u,
                Some(PendingReceipts {
                    node: "n".into(),
                    due_at: 5,
                    ids: vec![EnvelopeId([1; 16])],
                }),
            ),
        ])
        .unwrap();
        assert!(db.is_blocked(&UserId([2; 32])).unwrap());
        assert!(!db.is_blocked(&u).unwrap());
        assert_eq!(db.messages().unwrap()[0].peer_name, "robert");
        assert_eq!(db.pending_receipts().unwrap()[0].1.due_at, 5);
        db.commit(&[ClientWrite::Receipts(u, None)]).unwrap();
        assert!(db.pending_receipts().unwrap().is_empty());
    }

    /// Every file under `dir`, searched for each needle; the needles found.
    fn found_in_files(dir: &Path, needles: &[&[u8]]) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            for n in needles {
                if bytes.windows(n.len()).any(|w| w == *n) {
                    found.push(format!(
                        "{} in {}",
                        String::from_utf8_lossy(n),
                        path.display()
                    ));
                }
            }
        }
        found
    }

    #[test]
    fn encrypted_device_files_hold_no_text_name_or_secret() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [0x5au8; 32];
        let peer = UserId([0x37; 32]);
        let session = b"ratchet-root-key-0123456789abcdef".to_vec();
        let mut first = msg(1);
        first.text = "the eagle lands at midnight".into();
        first.peer = peer;
        first.peer_name = "zebediah".into();
        let contact = Contact {
            name: "zebediah".into(),
            handle: Some("zebediah".into()),
            address: Address {
                user: peer,
                node: "12D3KooWnode".into(),
            },
            trust: Trust::Verified,
            added_at: 1,
            origin: Origin::Accepted,
            claims: None,
            reset_asked_at: None,
        };
        {
            // Written in clear first, as a device made before it had a passphrase.
            let mut db = ClientDb::open(dir.path(), None).unwrap();
            db.set_identity(&StoredIdentity {
                seed,
                name: "alice".into(),
                home_node: "12D3KooWhome".into(),
                home_addr: "/ip4/127.0.0.1/tcp/1".into(),
            })
            .unwrap();
            assert!(db.record_message(&first).unwrap());
            db.put_contact(&contact).unwrap();
            db.commit(&[ClientWrite::Sessions(
                peer,
                vec![Zeroizing::new(session.clone())],
                2,
            )])
            .unwrap();
            db.encrypt(b"correct horse", KdfParams::TEST_ONLY).unwrap();
            // Written sealed from the start.
            let mut second = msg(2);
            second.text = "second secret text".into();
            assert!(db.record_message(&second).unwrap());
            db.set_setting("receipts", b"policy-bytes").unwrap();
        }
        let needles: [&[u8]; 7] = [
            b"the eagle lands",
            b"second secret",
            b"zebediah",
            &seed,
            &session,
            peer.as_bytes(),
            b"policy-bytes",
        ];
        assert_eq!(found_in_files(dir.path(), &needles), Vec::<String>::new());
        assert!(matches!(
            ClientDb::open(dir.path(), None),
            Err(StoreError::Locked)
        ));
        assert!(matches!(
            ClientDb::open(dir.path(), Some(b"wrong horse")),
            Err(StoreError::WrongPassphrase)
        ));
        let read_back = |db: &ClientDb| {
            let texts: Vec<_> = db.messages().unwrap().into_iter().map(|m| m.text).collect();
            assert_eq!(texts, ["the eagle lands at midnight", "second secret text"]);
            assert_eq!(db.identity().unwrap().unwrap().seed, seed);
            assert_eq!(db.contact("zebediah").unwrap(), Some(contact.clone()));
            assert_eq!(db.contacts().unwrap().len(), 1);
            assert_eq!(*db.sessions(&peer).unwrap()[0], session);
            assert_eq!(db.session_users().unwrap(), [peer]);
            assert_eq!(db.skipped_counts().unwrap(), [(peer, 2)]);
            assert!(db.has_message(&EnvelopeId([2; 16])).unwrap());
            assert_eq!(db.setting("receipts").unwrap().unwrap(), b"policy-bytes");
        };
        {
            let mut db = ClientDb::open(dir.path(), Some(b"correct horse")).unwrap();
            read_back(&db);
            assert!(matches!(
                db.encrypt(b"again", KdfParams::TEST_ONLY),
                Err(StoreError::AlreadyEncrypted)
            ));
            db.change_passphrase(b"battery staple", KdfParams::TEST_ONLY)
                .unwrap();
        }
        assert!(matches!(
            ClientDb::open(dir.path(), Some(b"correct horse")),
            Err(StoreError::WrongPassphrase)
        ));
        let db = ClientDb::open(dir.path(), Some(b"battery staple")).unwrap();
        read_back(&db);
        drop(db);
        assert_eq!(found_in_files(dir.path(), &needles), Vec::<String>::new());

        // A full check reads an encrypted database through its vault: meta (kind, schema,
        // vault), a message and its id → seq entry.
        let dir = tempfile::tempdir().unwrap();
        let mut db = ClientDb::open(dir.path(), None).unwrap();
        db.encrypt(b"correct horse", KdfParams::TEST_ONLY).unwrap();
        assert!(db.record_message(&msg(1)).unwrap());
        assert_eq!(db.check().unwrap(), 5);
    }
}
