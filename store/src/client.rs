//! The client database on a user's device: identity, contacts with pinned keys, history.
//! History lives here and only here; the node never holds it.

use crate::schema::*;
use crate::{Result, decode_value, encode_value};
use hestia_protocol::Millis;
use hestia_protocol::envelope::EnvelopeId;
use hestia_protocol::identity::{Address, UserId};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The stored identity. The seed is the user's secret key: zeroized on drop, never printed.
/// It is stored unencrypted, protected by the file permissions of the data directory.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct StoredIdentity {
    pub seed: [u8; 32],
    pub name: String,
    pub home_node: String,
    pub home_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trust {
    /// Key pinned on first use, not compared out of band.
    Unverified,
    /// The user compared fingerprints or safety numbers.
    Verified,
    /// Someone using this contact's name and node presented another key. Messages under the new
    /// key are held until the user accepts it.
    Changed { new_key: UserId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The local name the user calls this contact by.
    pub name: String,
    /// The account handle the contact goes by on their node (from their card or letters).
    pub handle: Option<String>,
    pub address: Address,
    pub trust: Trust,
    pub added_at: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Incoming,
    Outgoing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// Outgoing, in the home node's outbox.
    Queued,
    DeliveredToNode,
    DeliveredToDevice,
    Expired,
    NoSuchUser,
    Failed(String),
    /// Incoming, read.
    Received,
    /// Incoming under a key that differs from the pinned one: not shown as trusted.
    HeldKeyChanged,
    /// Outgoing, a first message to a contact whose node did not answer the prekey fetch: kept
    /// on the device (only) and sent once their node answers.
    WaitingForKeys,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub envelope_id: EnvelopeId,
    pub direction: Direction,
    /// The other party's key.
    pub peer: UserId,
    pub peer_node: String,
    /// The contact name at the time, for display.
    pub peer_name: String,
    pub text: String,
    pub at: Millis,
    pub expires_at: Millis,
    pub state: MessageState,
}

/// The stored forms of the sessions with one contact, newest first. Secret: zeroized on drop.
pub type StoredSessions = Vec<zeroize::Zeroizing<Vec<u8>>>;

/// One change in a [`ClientDb::commit`] batch.
pub enum ClientWrite {
    /// A new message (the caller has checked it is not stored yet).
    Message(StoredMessage),
    /// Replace a stored message (same envelope id); ignored if there is none.
    UpdateMessage(StoredMessage),
    /// Replace the sessions with this user (stored forms, newest first).
    Sessions(UserId, StoredSessions),
    /// Replace the prekey secrets (stored form).
    Prekeys(zeroize::Zeroizing<Vec<u8>>),
    Contact(Contact),
}

pub struct ClientDb {
    db: rocksdb::DB,
    next_seq: u64,
}

impl ClientDb {
    pub fn open(path: &Path) -> Result<Self> {
        let db = crate::open_db(path, CLIENT_CFS, "client")?;
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

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    fn put_synced(&self, cf: &str, k: &[u8], v: &[u8]) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
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
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
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
        let Some((seq, mut m)) = self.message(id)? else {
            return Ok(false);
        };
        if m.state == state {
            return Ok(false);
        }
        m.state = state;
        self.put_synced(SEQ_MESSAGE, &seq_key(seq), &encode_value(SEQ_MESSAGE, &m)?)?;
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

    /// Every stored session, by remote user (for the device-wide bound on skipped keys).
    pub fn all_sessions(&self) -> Result<Vec<(UserId, StoredSessions)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(USERID_SESSIONS), rocksdb::IteratorMode::Start)
        {
            let (k, mut v) = item?;
            let user: [u8; 32] = k
                .as_ref()
                .try_into()
                .map_err(|_| crate::StoreError::Corrupt {
                    cf: USERID_SESSIONS,
                    reason: "bad key length".into(),
                })?;
            let list: Result<Vec<Vec<u8>>> = decode_value(USERID_SESSIONS, &v);
            v.zeroize();
            out.push((
                UserId(user),
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
                ClientWrite::Sessions(user, sessions) => {
                    let plain: Vec<&[u8]> = sessions.iter().map(|s| s.as_slice()).collect();
                    let mut v = encode_value(USERID_SESSIONS, &plain)?;
                    b.put_cf(self.cf(USERID_SESSIONS), user.as_bytes(), &v);
                    v.zeroize();
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
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
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
        assert!(
            db.set_state(&EnvelopeId([2; 16]), MessageState::HeldKeyChanged)
                .unwrap()
        );
        assert_eq!(
            db.message(&EnvelopeId([2; 16])).unwrap().unwrap().1.state,
            MessageState::HeldKeyChanged
        );
    }
}
