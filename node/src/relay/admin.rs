//! What the operator decides: registration (open, by invite, closed), suspended accounts,
//! invites, and the federation policy, with the admin requests that read and change them.
//!
//! Like the rest of the core this is sans-IO: [`Core::handle_admin`] takes `now`, the request
//! and fresh random bytes from the driver (an invite's token), queues the writes, and answers
//! with [`super::Output::Admin`] once they are durable. The driver carries requests from its
//! local admin socket; nothing here is reachable from the network.

use super::{Core, Output, Token};
use hestia_protocol::Millis;
use hestia_protocol::identity::{MAX_NODE_ID_LEN, UserId, hex};
use hestia_protocol::redact;
use hestia_protocol::wire::{ClientError, ClientResponse};
use hestia_store::node::{
    AccountRecord, FederationRecord, FederationRule, InviteRecord, NodeWrite, SuspensionRecord,
};
use hestia_store::records::MAX_ADMIN_NOTE_LEN;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Invites a node holds at once (used-up and expired ones count until revoked or pruned).
pub const MAX_INVITES: usize = 10_000;
/// Most registrations one invite may allow.
pub const MAX_INVITE_USES: u32 = 100_000;
/// Nodes on the federation deny and allow lists together.
pub const MAX_FEDERATION_RULES: usize = 10_000;
/// New accounts one source address (an IPv4 address, an IPv6 /64) may register per hour.
pub const REGISTRATIONS_PER_ADDRESS_PER_HOUR: u32 = 10;
/// Source addresses whose registrations this hour are counted; past it, registrations from
/// new addresses wait for the next hour (a flood from many addresses stays bounded too).
pub const MAX_REGISTRATION_SOURCES: usize = 10_000;
const HOUR_MS: Millis = 3_600_000;
/// Hex digits of an invite's hash that name it in `invite list` and `invite revoke`.
pub const INVITE_ID_LEN: usize = 12;

/// Who may create an account here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// Anyone who reaches the node.
    #[default]
    Open,
    /// Whoever holds a valid invite token (`hestia account create --invite TOKEN`).
    Invite,
    /// No one.
    Closed,
}

impl std::fmt::Display for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Registration::Open => "open",
            Registration::Invite => "by invite",
            Registration::Closed => "closed",
        })
    }
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Registration::Open),
            "invite" => Ok(Registration::Invite),
            "closed" => Ok(Registration::Closed),
            _ => Err(format!(
                "registration must be open, invite or closed, not {s:?}"
            )),
        }
    }
}

/// A request on the admin socket: one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum AdminRequest {
    Status,
    UserList,
    /// `user`: 64 hex digits, or a prefix of at least 8 that names one account.
    UserShow {
        user: String,
    },
    UserSuspend {
        user: String,
        #[serde(default)]
        note: String,
    },
    UserUnsuspend {
        user: String,
    },
    /// Removes the account and all it holds here: mailbox, prekeys, push subscriptions,
    /// files, delivery records.
    UserDelete {
        user: String,
    },
    InviteCreate {
        uses: u32,
        /// `None`: does not expire.
        expires_in_secs: Option<u64>,
        #[serde(default)]
        note: String,
    },
    InviteList,
    InviteRevoke {
        id: String,
    },
    FederationDeny {
        node: String,
    },
    FederationAllow {
        node: String,
    },
    /// Removes `node` from either list.
    FederationClear {
        node: String,
    },
    FederationList,
    /// Handled by the driver: the log filter (for example `debug` or `info,hestia_node=trace`).
    LogLevel {
        level: String,
    },
    /// Handled by the driver: an online backup of the database.
    BackupCreate,
    BackupList,
    /// Handled by the driver: restores the backup (the newest if `None`) into a scratch
    /// directory and decodes every entry.
    BackupVerify {
        id: Option<u32>,
    },
}

/// The answer to an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "data")]
pub enum AdminResponse {
    Status(AdminStatus),
    Users(Vec<UserInfo>),
    User(UserInfo),
    /// A change made, said in a sentence.
    Done(String),
    /// A new invite: the token is shown this once.
    InviteCreated {
        token: String,
        invite: InviteInfo,
    },
    Invites(Vec<InviteInfo>),
    Federation(Vec<FederationEntry>),
    Backups(Vec<BackupInfo>),
    Error(String),
}

/// What `node admin status` shows. The driver fills in what the core does not know.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStatus {
    pub node_id: String,
    pub version: String,
    pub uptime_secs: u64,
    pub registration: Registration,
    pub accounts: usize,
    pub suspended: usize,
    /// Accounts with at least one device connected.
    pub online_users: usize,
    pub connected_devices: usize,
    pub connected_peers: usize,
    pub mailbox_envelopes: usize,
    pub mailbox_bytes: u64,
    pub outbox_envelopes: usize,
    pub outbox_destinations: usize,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub invites: usize,
    pub federation_denied: usize,
    pub federation_allowed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub user: String,
    pub created_at: Millis,
    pub suspended: Option<SuspensionRecord>,
    pub online: bool,
    pub mailbox_envelopes: usize,
    pub mailbox_bytes: u64,
    pub one_time_prekeys: usize,
    pub push_subscriptions: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteInfo {
    pub id: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub uses: u32,
    pub used: u32,
    pub note: String,
    /// `valid`, `expired` or `used up`.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationEntry {
    pub node: String,
    pub rule: FederationRule,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: u32,
    /// Unix seconds.
    pub created_at: i64,
    pub bytes: u64,
    pub files: u32,
}

/// The operator's state the core decides with.
#[derive(Default)]
pub(super) struct Policy {
    pub(super) registration: Registration,
    suspended: HashMap<UserId, SuspensionRecord>,
    invites: HashMap<[u8; 32], InviteRecord>,
    federation: BTreeMap<String, FederationRecord>,
    allowed: usize,
    /// Registrations this hour per source address, and when the hour began.
    sources: HashMap<[u8; 16], u32>,
    window: Millis,
}

/// The key a registration is counted under: an IPv4 address, or an IPv6 address's /64.
fn source_key(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_ipv6_mapped().octets(),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                o
            }
        },
    }
}

pub(super) fn invite_hash(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hestia/invite/v1");
    h.update(token.trim().as_bytes());
    h.finalize().into()
}

fn invite_info(hash: &[u8; 32], r: &InviteRecord, now: Millis) -> InviteInfo {
    let state = if r.used >= r.uses {
        "used up"
    } else if r.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "valid"
    };
    InviteInfo {
        id: hex(hash)[..INVITE_ID_LEN].to_string(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        uses: r.uses,
        used: r.used,
        note: r.note.clone(),
        state: state.into(),
    }
}

fn note(text: &str) -> Result<String, String> {
    if text.len() > MAX_ADMIN_NOTE_LEN {
        return Err(format!("a note is at most {MAX_ADMIN_NOTE_LEN} bytes"));
    }
    // Shown in terminals: no control characters.
    Ok(text.chars().filter(|c| !c.is_control()).collect())
}

impl Policy {
    pub(super) fn new(
        registration: Registration,
        suspended: Vec<(UserId, SuspensionRecord)>,
        invites: Vec<([u8; 32], InviteRecord)>,
        federation: Vec<(String, FederationRecord)>,
    ) -> Policy {
        let allowed = federation
            .iter()
            .filter(|(_, r)| r.rule == FederationRule::Allow)
            .count();
        Policy {
            registration,
            suspended: suspended.into_iter().collect(),
            invites: invites.into_iter().collect(),
            federation: federation.into_iter().collect(),
            allowed,
            sources: HashMap::default(),
            window: 0,
        }
    }

    pub(super) fn is_suspended(&self, user: &UserId) -> bool {
        self.suspended.contains_key(user)
    }

    /// Whether this node exchanges mail with `node`: not if denied; if any node is allowed,
    /// only the allowed ones.
    pub(super) fn federates_with(&self, node: &str) -> bool {
        match self.federation.get(node).map(|r| r.rule) {
            Some(FederationRule::Deny) => false,
            Some(FederationRule::Allow) => true,
            None => self.allowed == 0,
        }
    }

    /// Counts a new registration from `source` (`None`: not counted, such as loopback), or
    /// refuses it with the wait until the next hour.
    fn count_registration(
        &mut self,
        source: Option<std::net::IpAddr>,
        now: Millis,
    ) -> Result<(), ClientError> {
        let Some(ip) = source else { return Ok(()) };
        if now.saturating_sub(self.window) >= HOUR_MS {
            self.sources.clear();
            self.window = now;
        }
        let retry = ClientError::RateLimited {
            retry_after_ms: (self.window + HOUR_MS).saturating_sub(now) as u32,
        };
        let key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_REGISTRATION_SOURCES {
            return Err(retry);
        }
        let n = self.sources.entry(key).or_default();
        if *n >= REGISTRATIONS_PER_ADDRESS_PER_HOUR {
            return Err(retry);
        }
        *n += 1;
        Ok(())
    }

    /// Checks an invite and spends one use of it.
    fn spend_invite(
        &mut self,
        token: &str,
        now: Millis,
        writes: &mut Vec<NodeWrite>,
    ) -> Result<(), ClientError> {
        let hash = invite_hash(token);
        let Some(r) = self.invites.get_mut(&hash) else {
            return Err(ClientError::InviteInvalid);
        };
        if r.used >= r.uses {
            return Err(ClientError::InviteUsedUp);
        }
        if r.expires_at.is_some_and(|at| at <= now) {
            return Err(ClientError::InviteExpired);
        }
        r.used += 1;
        writes.push(NodeWrite::PutInvite(hash, r.clone()));
        Ok(())
    }
}

impl Core {
    /// Creates an account for `user`, registering from `source` (the driver leaves loopback
    /// out) with `invite`, if the node's registration policy lets it.
    pub(super) fn register(
        &mut self,
        user: UserId,
        invite: Option<&str>,
        source: Option<std::net::IpAddr>,
        now: Millis,
    ) -> ClientResponse {
        if self.policy.is_suspended(&user) {
            return ClientResponse::Error(ClientError::Suspended);
        }
        if self.accounts.contains_key(&user) {
            return ClientResponse::Registered;
        }
        let refuse = |e| ClientResponse::Error(e);
        match (self.policy.registration, invite) {
            (Registration::Closed, _) => return refuse(ClientError::RegistrationClosed),
            (Registration::Invite, None) => return refuse(ClientError::InviteRequired),
            _ => {}
        }
        if self.accounts.len() >= super::MAX_ACCOUNTS {
            return refuse(ClientError::Overloaded);
        }
        if let Err(e) = self.policy.count_registration(source, now) {
            tracing::info!("registration refused: too many from one address this hour");
            return refuse(e);
        }
        // In an open node an invite is not needed and not spent.
        if self.policy.registration == Registration::Invite
            && let Some(token) = invite
            && let Err(e) = self.policy.spend_invite(token, now, &mut self.writes)
        {
            tracing::info!(error = ?e, "registration refused: invite");
            return refuse(e);
        }
        let rec = AccountRecord { created_at: now };
        self.writes.push(NodeWrite::PutAccount(user, rec.clone()));
        self.accounts.insert(user, rec);
        tracing::info!(user = %redact::User(&user), "account registered");
        ClientResponse::Registered
    }

    /// Sets who may register (from the node's config, at start and on reload).
    pub fn set_registration(&mut self, registration: Registration) {
        self.policy.registration = registration;
    }

    /// Whether this node exchanges mail with `node` (the operator's federation policy).
    pub fn federates_with(&self, node: &str) -> bool {
        self.policy.federates_with(node)
    }

    /// An admin request from the driver's local socket. `entropy` is fresh random bytes (an
    /// invite's token is made of them). The answer comes as [`Output::Admin`] after the writes.
    /// Requests the driver handles itself ([`AdminRequest::LogLevel`], backups) are refused.
    pub fn handle_admin(
        &mut self,
        now: Millis,
        token: Token,
        req: AdminRequest,
        entropy: [u8; 16],
    ) {
        let now = self.advance(now);
        let response = match self.admin(now, req, entropy) {
            Ok(r) => r,
            Err(e) => AdminResponse::Error(e),
        };
        self.outputs.push_back(Output::Admin { token, response });
    }

    fn admin(
        &mut self,
        now: Millis,
        req: AdminRequest,
        entropy: [u8; 16],
    ) -> Result<AdminResponse, String> {
        Ok(match req {
            AdminRequest::Status => AdminResponse::Status(self.admin_status()),
            AdminRequest::UserList => {
                let mut users: Vec<UserInfo> =
                    self.accounts.keys().map(|u| self.user_info(u)).collect();
                users.sort_by_key(|u| u.created_at);
                AdminResponse::Users(users)
            }
            AdminRequest::UserShow { user } => {
                let user = self.find_user(&user)?;
                AdminResponse::User(self.user_info(&user))
            }
            AdminRequest::UserSuspend { user, note: text } => {
                let user = self.find_user(&user)?;
                let rec = SuspensionRecord {
                    at: now,
                    note: note(&text)?,
                };
                self.writes
                    .push(NodeWrite::PutSuspension(user, rec.clone()));
                self.policy.suspended.insert(user, rec);
                self.end_sessions_of(&user, ClientError::Suspended);
                tracing::info!(user = %redact::User(&user), "account suspended");
                AdminResponse::Done(format!("suspended {}", user.to_hex()))
            }
            AdminRequest::UserUnsuspend { user } => {
                let user = self.find_user(&user)?;
                if self.policy.suspended.remove(&user).is_none() {
                    return Err(format!("{} is not suspended", user.to_hex()));
                }
                self.writes.push(NodeWrite::DeleteSuspension(user));
                tracing::info!(user = %redact::User(&user), "account unsuspended");
                AdminResponse::Done(format!("unsuspended {}", user.to_hex()))
            }
            AdminRequest::UserDelete { user } => {
                let user = self.find_user(&user)?;
                let removed = self.delete_user(&user);
                AdminResponse::Done(format!(
                    "deleted {} and the {removed} envelopes held for it",
                    user.to_hex()
                ))
            }
            AdminRequest::InviteCreate {
                uses,
                expires_in_secs,
                note: text,
            } => {
                if uses == 0 || uses > MAX_INVITE_USES {
                    return Err(format!("uses must be 1 to {MAX_INVITE_USES}"));
                }
                if self.policy.invites.len() >= MAX_INVITES {
                    return Err(format!(
                        "this node holds {MAX_INVITES} invites already; revoke some first"
                    ));
                }
                let token = hex(&entropy);
                let hash = invite_hash(&token);
                let rec = InviteRecord {
                    created_at: now,
                    expires_at: expires_in_secs.map(|s| now.saturating_add(s.saturating_mul(1000))),
                    uses,
                    used: 0,
                    note: note(&text)?,
                };
                let invite = invite_info(&hash, &rec, now);
                self.writes.push(NodeWrite::PutInvite(hash, rec.clone()));
                self.policy.invites.insert(hash, rec);
                AdminResponse::InviteCreated { token, invite }
            }
            AdminRequest::InviteList => {
                let mut list: Vec<InviteInfo> = self
                    .policy
                    .invites
                    .iter()
                    .map(|(h, r)| invite_info(h, r, now))
                    .collect();
                list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                AdminResponse::Invites(list)
            }
            AdminRequest::InviteRevoke { id } => {
                let id = id.trim().to_ascii_lowercase();
                if id.len() < 8 {
                    return Err("give at least 8 hex digits of the invite's id".into());
                }
                let found: Vec<[u8; 32]> = self
                    .policy
                    .invites
                    .keys()
                    .filter(|h| hex(&h[..]).starts_with(&id))
                    .copied()
                    .collect();
                let [hash] = found[..] else {
                    return Err(match found.len() {
                        0 => format!("no invite {id}"),
                        n => format!("{n} invites start with {id}; give more digits"),
                    });
                };
                self.policy.invites.remove(&hash);
                self.writes.push(NodeWrite::DeleteInvite(hash));
                AdminResponse::Done(format!("revoked invite {}", &hex(&hash)[..INVITE_ID_LEN]))
            }
            AdminRequest::FederationDeny { node } => {
                self.set_federation(&node, Some(FederationRule::Deny), now)?
            }
            AdminRequest::FederationAllow { node } => {
                self.set_federation(&node, Some(FederationRule::Allow), now)?
            }
            AdminRequest::FederationClear { node } => self.set_federation(&node, None, now)?,
            AdminRequest::FederationList => AdminResponse::Federation(
                self.policy
                    .federation
                    .iter()
                    .map(|(node, r)| FederationEntry {
                        node: node.clone(),
                        rule: r.rule,
                        at: r.at,
                    })
                    .collect(),
            ),
            AdminRequest::LogLevel { .. }
            | AdminRequest::BackupCreate
            | AdminRequest::BackupList
            | AdminRequest::BackupVerify { .. } => {
                return Err("the node's driver answers this request".into());
            }
        })
    }

    /// The core's part of `node admin status`.
    pub fn admin_status(&self) -> AdminStatus {
        let stats = self.stats();
        AdminStatus {
            node_id: self.config.node_id.clone(),
            registration: self.policy.registration,
            accounts: stats.accounts,
            suspended: self.policy.suspended.len(),
            online_users: self.online.len(),
            connected_devices: self.sessions.len(),
            mailbox_envelopes: stats.mailbox_envelopes,
            mailbox_bytes: stats.stored_bytes,
            outbox_envelopes: stats.outbox_envelopes,
            outbox_destinations: self.outboxes.len(),
            blobs: stats.blobs,
            blob_bytes: stats.blob_bytes,
            invites: self.policy.invites.len(),
            federation_denied: self.policy.federation.len() - self.policy.allowed,
            federation_allowed: self.policy.allowed,
            ..AdminStatus::default()
        }
    }

    /// An account named by its id or an unambiguous prefix of at least 8 hex digits.
    fn find_user(&self, text: &str) -> Result<UserId, String> {
        let text = text.trim().to_ascii_lowercase();
        let text = text.split('@').next().unwrap_or_default();
        if text.len() < 8 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("name the user by its id: at least 8 hex digits".into());
        }
        let found: Vec<UserId> = self
            .accounts
            .keys()
            .filter(|u| u.to_hex().starts_with(text))
            .copied()
            .take(2)
            .collect();
        match found[..] {
            [u] => Ok(u),
            [] => Err(format!("no account {text} on this node")),
            _ => Err(format!(
                "more than one account starts with {text}; give more digits"
            )),
        }
    }

    fn user_info(&self, user: &UserId) -> UserInfo {
        let ix = self.users.get(user);
        UserInfo {
            user: user.to_hex(),
            created_at: self.accounts.get(user).map_or(0, |a| a.created_at),
            suspended: self.policy.suspended.get(user).cloned(),
            online: self.online.contains_key(user),
            mailbox_envelopes: ix
                .and_then(|i| self.mailboxes.get(&i))
                .map_or(0, |m| m.len()),
            mailbox_bytes: ix
                .and_then(|i| self.mail_bytes.get(&i))
                .copied()
                .unwrap_or(0),
            one_time_prekeys: self.one_time_prekeys.get(user).map_or(0, |k| k.len()),
            push_subscriptions: self.pushes.count(user),
        }
    }

    /// Ends `user`'s sessions and answers their waiting fetches with `why`: their devices sign
    /// again, and are refused.
    fn end_sessions_of(&mut self, user: &UserId, why: ClientError) {
        let peers: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, u)| *u == user)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in peers {
            self.sessions.remove(&peer);
            self.went_offline(user);
            for p in self.parked.take_of_peer(&peer) {
                self.respond_client(p.token, ClientResponse::Error(why));
            }
        }
        self.session_order.retain(|p| self.sessions.contains_key(p));
    }

    /// Removes `user` and everything held for it here. Mail it sent that waits for other
    /// nodes still goes (it was accepted); the number of its own envelopes removed.
    fn delete_user(&mut self, user: &UserId) -> usize {
        self.end_sessions_of(user, ClientError::NotRegistered);
        let ids: Vec<_> = self
            .users
            .get(user)
            .and_then(|ix| self.mailboxes.get(&ix))
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        for id in &ids {
            self.remove_mailbox(user, id);
        }
        for key in self.one_time_prekeys.remove(user).unwrap_or_default() {
            self.writes.push(NodeWrite::DeleteOneTimePrekey(*user, key));
        }
        self.signed_prekeys.remove(user);
        self.pushes.unregister(*user, None, &mut self.writes);
        self.blobs.remove_owned(user, &mut self.writes);
        let statuses: Vec<_> = self
            .status
            .iter()
            .filter(|(_, r)| r.owner == *user)
            .map(|(id, _)| *id)
            .collect();
        for id in statuses {
            self.status.remove(&id);
            self.writes.push(NodeWrite::DeleteStatus(id));
        }
        self.status_per_owner.remove(user);
        if self.policy.suspended.remove(user).is_some() {
            self.writes.push(NodeWrite::DeleteSuspension(*user));
        }
        self.send_budget.remove(user);
        self.handouts.remove(user);
        self.accounts.remove(user);
        self.writes.push(NodeWrite::DeleteAccount(*user));
        tracing::info!(user = %redact::User(user), envelopes = ids.len(), "account deleted");
        ids.len()
    }

    fn set_federation(
        &mut self,
        node: &str,
        rule: Option<FederationRule>,
        now: Millis,
    ) -> Result<AdminResponse, String> {
        let node = node.trim();
        if node.is_empty()
            || node.len() > MAX_NODE_ID_LEN
            || !node.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(format!("{node:?} is not a node id"));
        }
        if node == self.config.node_id {
            return Err("that is this node".into());
        }
        let old = self.policy.federation.remove(node);
        if old
            .as_ref()
            .is_some_and(|r| r.rule == FederationRule::Allow)
        {
            self.policy.allowed -= 1;
        }
        let Some(rule) = rule else {
            return Ok(match old {
                Some(_) => {
                    self.writes
                        .push(NodeWrite::DeleteFederation(node.to_string()));
                    AdminResponse::Done(format!("{node} is on neither list now"))
                }
                None => AdminResponse::Done(format!("{node} was on neither list")),
            });
        };
        if old.is_none() && self.policy.federation.len() >= MAX_FEDERATION_RULES {
            return Err(format!(
                "the lists hold {MAX_FEDERATION_RULES} nodes already"
            ));
        }
        let rec = FederationRecord { rule, at: now };
        self.writes
            .push(NodeWrite::PutFederation(node.to_string(), rec.clone()));
        self.policy.federation.insert(node.to_string(), rec);
        if rule == FederationRule::Allow {
            self.policy.allowed += 1;
        }
        // Mail queued for nodes this node no longer federates with is refused now: its senders
        // see it at once instead of at its expiry.
        let refused: Vec<String> = self
            .outboxes
            .keys()
            .filter(|n| !self.policy.federates_with(n))
            .cloned()
            .collect();
        let mut dropped = 0;
        for n in refused {
            let ids: Vec<_> = self
                .outboxes
                .get(&n)
                .map(|o| {
                    o.records
                        .keys()
                        .filter(|id| {
                            !self
                                .in_flight
                                .values()
                                .any(|(_, batch, _)| batch.contains(id))
                        })
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            for id in ids {
                self.finish_outbox(&n, &id, hestia_protocol::wire::DeliveryState::Refused);
                dropped += 1;
            }
        }
        let what = match rule {
            FederationRule::Deny => "denied",
            FederationRule::Allow => "allowed",
        };
        tracing::info!(node, rule = what, dropped, "federation policy changed");
        Ok(AdminResponse::Done(if dropped > 0 {
            format!("{node} is {what}; {dropped} queued envelopes refused")
        } else {
            format!("{node} is {what}")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_counted_per_address_and_per_64() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_key(v4), source_key(mapped));
        let mut p = Policy::default();
        for _ in 0..REGISTRATIONS_PER_ADDRESS_PER_HOUR {
            assert!(p.count_registration(Some(v4), 1000).is_ok());
        }
        assert!(matches!(
            p.count_registration(Some(v4), 2000),
            Err(ClientError::RateLimited { .. })
        ));
        assert!(
            p.count_registration(Some(a), 2000).is_ok(),
            "another address"
        );
        assert!(p.count_registration(None, 2000).is_ok(), "uncounted");
        assert!(
            p.count_registration(Some(v4), 1000 + HOUR_MS).is_ok(),
            "next hour"
        );
    }
}
