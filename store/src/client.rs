//! The client database on a user's device: identity, contacts with pinned keys, history.
//! History lives here and only here; the node never holds it.

pub use crate::records::{
    CallOutcome, Contact, Direction, FileState, MessageState, Origin, PendingReceipts, StoredFile,
    StoredIdentity, StoredMessage, StoredUpload, Trust, UnsentEnvelope,
};
use crate::schema::*;
use crate::{Result, decode_value, encode_value};
use hestia_protocol::envelope::EnvelopeId;
use hestia_protocol::file::BlobId;
use hestia_protocol::identity::{Address, UserId};
use std::path::Path;
use zeroize::Zeroize;

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
}

impl ClientDb {
    pub fn open(path: &Path) -> Result<Self> {
        let db = crate::open_db(path, CLIENT_CFS, "client", migrate)?;
        let next_seq = {
            let cf = db.cf_handle(SEQ_MESSAGE).expect("created at open");
            let mut it = db.iterator_cf(&cf, rocksdb::IteratorMode::End);
            match it.next() {
                Some(item) => decode_seq(&item?.0).map_or(0, |s| s + 1),
                None => 0,
            }
        };
        Ok(ClientDb { db, next_seq })
    }

    /// Decodes every stored entry ([`crate::records::check`]); the number of entries.
    pub fn check(&self) -> Result<u64> {
        crate::check_all(&self.db, CLIENT_CFS)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    fn put_synced(&self, cf: &str, k: &[u8], v: &[u8]) -> Result<()> {
        let wo = crate::synced();
        Ok(self.db.put_cf_opt(self.cf(cf), k, v, &wo)?)
    }

    pub fn identity(&self) -> Result<Option<StoredIdentity>> {
        match self.db.get_cf(self.cf(KEY_IDENTITY), b"identity")? {
            Some(v) => {
                let mut v = v;
                let id = decode_value(KEY_IDENTITY, &v);
                v.zeroize();
                Ok(Some(id?))
            }
            None => Ok(None),
        }
    }

    pub fn set_identity(&self, id: &StoredIdentity) -> Result<()> {
        let mut v = encode_value(KEY_IDENTITY, id)?;
        let r = self.put_synced(KEY_IDENTITY, b"identity", &v);
        v.zeroize();
        r
    }

    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(NAME_CONTACT), rocksdb::IteratorMode::Start)
        {
            out.push(decode_value(NAME_CONTACT, &item?.1)?);
        }
        Ok(out)
    }

    pub fn contact(&self, name: &str) -> Result<Option<Contact>> {
        self.db
            .get_cf(self.cf(NAME_CONTACT), name.as_bytes())?
            .map(|v| decode_value(NAME_CONTACT, &v))
            .transpose()
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
        Ok(self
            .db
            .get_cf(self.cf(USERID_BLOCKED), user.as_bytes())?
            .is_some())
    }

    /// The delivery receipts owed to `user`, if any.
    pub fn receipts(&self, user: &UserId) -> Result<Option<PendingReceipts>> {
        self.db
            .get_cf(self.cf(USERID_RECEIPTS), user.as_bytes())?
            .map(|v| decode_value(USERID_RECEIPTS, &v))
            .transpose()
    }

    /// Every contact's pending delivery receipts.
    pub fn pending_receipts(&self) -> Result<Vec<(UserId, PendingReceipts)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(USERID_RECEIPTS), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push((
                user_key(USERID_RECEIPTS, &k)?,
                decode_value(USERID_RECEIPTS, &v)?,
            ));
        }
        Ok(out)
    }

    /// A stored setting's value, if it was ever set.
    /// The file carried by this message, if any.
    pub fn file(&self, id: &EnvelopeId) -> Result<Option<StoredFile>> {
        self.db
            .get_cf(self.cf(ENVELOPEID_FILE), id.0)?
            .map(|v| decode_value(ENVELOPEID_FILE, &v))
            .transpose()
    }

    /// Every file sent or received, by message id.
    pub fn files(&self) -> Result<Vec<(EnvelopeId, StoredFile)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(ENVELOPEID_FILE), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let id: [u8; 16] = k
                .as_ref()
                .try_into()
                .map_err(|_| crate::StoreError::Corrupt {
                    cf: ENVELOPEID_FILE,
                    reason: "bad key length".into(),
                })?;
            out.push((EnvelopeId(id), decode_value(ENVELOPEID_FILE, &v)?));
        }
        Ok(out)
    }

    /// Every upload begun and not yet announced.
    /// Envelopes the home node has not acknowledged, oldest first (by when they were sealed).
    pub fn unsent(&self) -> Result<Vec<UnsentEnvelope>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(ENVELOPEID_UNSENT), rocksdb::IteratorMode::Start)
        {
            out.push(decode_value::<UnsentEnvelope>(ENVELOPEID_UNSENT, &item?.1)?);
        }
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
            b.delete_cf(self.cf(ENVELOPEID_UNSENT), id.0);
            if let Some((seq, mut m)) = self.message(id)?
                && m.state != *state
            {
                m.state = state.clone();
                b.put_cf(
                    self.cf(SEQ_MESSAGE),
                    seq_key(seq),
                    encode_value(SEQ_MESSAGE, &m)?,
                );
            }
        }
        Ok(self.db.write(b)?)
    }

    pub fn uploads(&self) -> Result<Vec<StoredUpload>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(BLOBID_UPLOAD), rocksdb::IteratorMode::Start)
        {
            out.push(decode_value(BLOBID_UPLOAD, &item?.1)?);
        }
        Ok(out)
    }

    pub fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(NAME_SETTING), name.as_bytes())?)
    }

    pub fn set_setting(&self, name: &str, value: &[u8]) -> Result<()> {
        self.put_synced(NAME_SETTING, name.as_bytes(), value)
    }

    /// Stores a message unless one with the same envelope id is already stored (dedupe).
    /// Returns whether it was new. Synced: the caller acknowledges to the node after this.
    pub fn record_message(&mut self, m: &StoredMessage) -> Result<bool> {
        if self
            .db
            .get_cf(self.cf(ENVELOPEID_SEQ), m.envelope_id.0)?
            .is_some()
        {
            return Ok(false);
        }
        let seq = self.next_seq;
        let mut b = rocksdb::WriteBatch::default();
        b.put_cf(
            self.cf(SEQ_MESSAGE),
            seq_key(seq),
            encode_value(SEQ_MESSAGE, m)?,
        );
        b.put_cf(self.cf(ENVELOPEID_SEQ), m.envelope_id.0, seq_key(seq));
        let wo = crate::synced();
        self.db.write_opt(b, &wo)?;
        self.next_seq += 1;
        Ok(true)
    }

    pub fn message(&self, id: &EnvelopeId) -> Result<Option<(u64, StoredMessage)>> {
        let Some(seq) = self.db.get_cf(self.cf(ENVELOPEID_SEQ), id.0)? else {
            return Ok(None);
        };
        let seq_n = decode_seq(&seq).ok_or(crate::StoreError::Corrupt {
            cf: ENVELOPEID_SEQ,
            reason: "bad sequence".into(),
        })?;
        let Some(v) = self.db.get_cf(self.cf(SEQ_MESSAGE), &seq)? else {
            return Ok(None);
        };
        Ok(Some((seq_n, decode_value(SEQ_MESSAGE, &v)?)))
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
        let v = encode_value(SEQ_MESSAGE, &m)?;
        if sync {
            self.put_synced(SEQ_MESSAGE, &seq_key(seq), &v)?;
        } else {
            self.db.put_cf(self.cf(SEQ_MESSAGE), seq_key(seq), v)?;
        }
        Ok(true)
    }

    /// Whether a message with this envelope id is stored (incoming dedupe before decrypting:
    /// a ratchet refuses a message it has already decrypted).
    pub fn has_message(&self, id: &EnvelopeId) -> Result<bool> {
        Ok(self.db.get_cf(self.cf(ENVELOPEID_SEQ), id.0)?.is_some())
    }

    /// The prekey secrets' stored form, if any. The caller zeroizes it after use.
    pub fn prekeys(&self) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        Ok(self
            .db
            .get_cf(self.cf(KEY_IDENTITY), b"prekeys")?
            .map(zeroize::Zeroizing::new))
    }

    /// The stored sessions with `user`, newest first.
    pub fn sessions(&self, user: &UserId) -> Result<StoredSessions> {
        let Some(mut v) = self.db.get_cf(self.cf(USERID_SESSIONS), user.as_bytes())? else {
            return Ok(Vec::new());
        };
        let list: Result<Vec<Vec<u8>>> = decode_value(USERID_SESSIONS, &v);
        v.zeroize();
        Ok(list?.into_iter().map(zeroize::Zeroizing::new).collect())
    }

    /// Skipped message keys held per remote user (as last stored with their sessions).
    pub fn skipped_counts(&self) -> Result<Vec<(UserId, u32)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(USERID_SKIPPED), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            let n = v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                crate::StoreError::Corrupt {
                    cf: USERID_SKIPPED,
                    reason: "bad count".into(),
                }
            })?;
            out.push((user_key(USERID_SKIPPED, &k)?, n));
        }
        Ok(out)
    }

    /// The remote users this device holds sessions with (keys only: nothing is decoded).
    pub fn session_users(&self) -> Result<Vec<UserId>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(USERID_SESSIONS), rocksdb::IteratorMode::Start)
        {
            out.push(user_key(USERID_SESSIONS, &item?.0)?);
        }
        Ok(out)
    }

    /// Every stored session, by remote user (for the device-wide bound on skipped keys).
    pub fn all_sessions(&self) -> Result<Vec<(UserId, StoredSessions)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(USERID_SESSIONS), rocksdb::IteratorMode::Start)
        {
            let (k, mut v) = item?;
            let user = user_key(USERID_SESSIONS, &k)?;
            let list: Result<Vec<Vec<u8>>> = decode_value(USERID_SESSIONS, &v);
            v.zeroize();
            out.push((
                user,
                list?.into_iter().map(zeroize::Zeroizing::new).collect(),
            ));
        }
        Ok(out)
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
                    b.put_cf(
                        self.cf(SEQ_MESSAGE),
                        seq_key(seq),
                        encode_value(SEQ_MESSAGE, m)?,
                    );
                    b.put_cf(self.cf(ENVELOPEID_SEQ), m.envelope_id.0, seq_key(seq));
                    seq += 1;
                }
                ClientWrite::UpdateMessage(m) => {
                    if let Some((old_seq, _)) = self.message(&m.envelope_id)? {
                        b.put_cf(
                            self.cf(SEQ_MESSAGE),
                            seq_key(old_seq),
                            encode_value(SEQ_MESSAGE, m)?,
                        );
                    }
                }
                ClientWrite::Sessions(user, sessions, skipped) => {
                    let plain: Vec<&[u8]> = sessions.iter().map(|s| s.as_slice()).collect();
                    let mut v = encode_value(USERID_SESSIONS, &plain)?;
                    b.put_cf(self.cf(USERID_SESSIONS), user.as_bytes(), &v);
                    v.zeroize();
                    b.put_cf(
                        self.cf(USERID_SKIPPED),
                        user.as_bytes(),
                        skipped.to_be_bytes(),
                    );
                }
                ClientWrite::Prekeys(bytes) => {
                    b.put_cf(self.cf(KEY_IDENTITY), b"prekeys", bytes.as_slice());
                }
                ClientWrite::Contact(c) => {
                    b.put_cf(
                        self.cf(NAME_CONTACT),
                        c.name.as_bytes(),
                        encode_value(NAME_CONTACT, c)?,
                    );
                }
                ClientWrite::RemoveContact(name) => {
                    b.delete_cf(self.cf(NAME_CONTACT), name.as_bytes());
                }
                ClientWrite::RemoveSessions(user) => {
                    b.delete_cf(self.cf(USERID_SESSIONS), user.as_bytes());
                    b.delete_cf(self.cf(USERID_SKIPPED), user.as_bytes());
                }
                ClientWrite::Block(user) => {
                    b.put_cf(self.cf(USERID_BLOCKED), user.as_bytes(), []);
                }
                ClientWrite::RenamePeer { user, name } => {
                    for item in self
                        .db
                        .iterator_cf(self.cf(SEQ_MESSAGE), rocksdb::IteratorMode::Start)
                    {
                        let (k, v) = item?;
                        let mut m: StoredMessage = decode_value(SEQ_MESSAGE, &v)?;
                        if m.peer == *user && m.peer_name != *name {
                            m.peer_name = name.clone();
                            b.put_cf(self.cf(SEQ_MESSAGE), k, encode_value(SEQ_MESSAGE, &m)?);
                        }
                    }
                }
                ClientWrite::File(id, f) => {
                    let mut v = encode_value(ENVELOPEID_FILE, f)?;
                    b.put_cf(self.cf(ENVELOPEID_FILE), id.0, &v);
                    v.zeroize();
                }
                ClientWrite::Upload(blob, Some(u)) => {
                    let mut v = encode_value(BLOBID_UPLOAD, u)?;
                    b.put_cf(self.cf(BLOBID_UPLOAD), blob.0, &v);
                    v.zeroize();
                }
                ClientWrite::Upload(blob, None) => {
                    b.delete_cf(self.cf(BLOBID_UPLOAD), blob.0);
                }
                ClientWrite::Unsent(id, Some(u)) => {
                    b.put_cf(
                        self.cf(ENVELOPEID_UNSENT),
                        id.0,
                        encode_value(ENVELOPEID_UNSENT, u)?,
                    );
                }
                ClientWrite::Unsent(id, None) => b.delete_cf(self.cf(ENVELOPEID_UNSENT), id.0),
                ClientWrite::Receipts(user, Some(r)) => {
                    b.put_cf(
                        self.cf(USERID_RECEIPTS),
                        user.as_bytes(),
                        encode_value(USERID_RECEIPTS, r)?,
                    );
                }
                ClientWrite::Receipts(user, None) => {
                    b.delete_cf(self.cf(USERID_RECEIPTS), user.as_bytes());
                }
            }
        }
        let wo = crate::synced();
        self.db.write_opt(b, &wo)?;
        self.next_seq = seq;
        Ok(())
    }

    /// All messages in the order they were recorded.
    pub fn messages(&self) -> Result<Vec<StoredMessage>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(SEQ_MESSAGE), rocksdb::IteratorMode::Start)
        {
            out.push(decode_value(SEQ_MESSAGE, &item?.1)?);
        }
        Ok(out)
    }
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
            let mut db = ClientDb::open(dir.path()).unwrap();
            assert!(db.record_message(&msg(1)).unwrap());
            assert!(!db.record_message(&msg(1)).unwrap());
            assert!(db.record_message(&msg(2)).unwrap());
        }
        let mut db = ClientDb::open(dir.path()).unwrap();
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
            let mut db = ClientDb::open(dir.path()).unwrap();
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
        let db = ClientDb::open(dir.path()).unwrap();
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
        let mut db = ClientDb::open(dir.path()).unwrap();
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
}
