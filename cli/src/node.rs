//! `hestia node`: run a node, manage a running one through its admin socket, restore one from
//! a backup, inspect what one stores. The node's settings come from flags and an optional TOML
//! file (flags win); SIGHUP reloads the file's registration and log level, SIGTERM and Ctrl-C
//! shut the node down cleanly.

use crate::{default_dir, inspect};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use hestia_node::admin_socket;
use hestia_node::driver::{LogControl, Node, NodeConfig, PushSettings, Reload};
use hestia_node::relay::{
    AdminRequest, AdminResponse, AdminStatus, BackupInfo, FederationEntry, InviteInfo,
    Registration, UserInfo,
};
use hestia_protocol::wire::BlobSpec;
use hestia_store::tuning::DbTuning;
use libp2p::Multiaddr;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Run a node until interrupted.
    Run(Box<NodeRunArgs>),
    /// Manage a running node through its local admin socket (and restore a stopped one).
    Admin(AdminArgs),
    /// Show what a node stores (it may be running): sizes, recipients, expiries. Never text.
    Inspect {
        /// The node's data directory (as given to `hestia node run --data-dir`).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Args, Default)]
pub struct NodeRunArgs {
    /// TOML config file with any of: data_dir, listen, bootstrap, registration,
    /// registration_open, send_burst, sends_per_second, max_file_mib, file_quota_mib,
    /// file_storage_gib, push, push_contact, push_delay_max_secs, turn_listen,
    /// turn_calls_per_user, turn_calls, mailbox_max_messages, mailbox_max_mib,
    /// max_message_kib, max_ttl_days, metrics_listen, backup_dir, backups_keep, log_level, and
    /// the database's db_memory_mib, db_log_file_mib, db_log_files_kept, db_wal_recovery
    /// (docs/operating.md). SIGHUP reloads registration and log_level from it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the node keeps its key and its database (default: the platform data directory,
    /// ~/.local/share/hestia/node on Linux).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on (repeatable). Default /ip4/0.0.0.0/tcp/4001 and
    /// /ip4/0.0.0.0/udp/4001/quic-v1.
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Bootstrap node address ending in /p2p/<peer id> (repeatable).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Refuse new accounts (the same as --registration closed).
    #[arg(long)]
    closed_registration: bool,
    /// Who may create an account: open (anyone), invite (whoever holds an invite from
    /// `hestia node admin invite create`) or closed (no one). Default open.
    #[arg(long)]
    registration: Option<Registration>,
    /// Serve /metrics (OpenMetrics), /healthz and /readyz here, IP:PORT (for example
    /// 127.0.0.1:9464). Keep it on loopback or a private network.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Where `node admin backup create` puts backups (default: backups in the data
    /// directory; better on another disk).
    #[arg(long)]
    backup_dir: Option<PathBuf>,
    /// Backups kept; older ones are removed when a new one is taken (default 7).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    backups_keep: Option<u64>,
    /// Log lines as text (the default; no colours unless stderr is a terminal) or as JSON
    /// objects, one per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Envelopes one user may send in a burst (then `--sends-per-second`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    send_burst: Option<u64>,
    /// Sustained envelopes per second one user may send.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    sends_per_second: Option<u64>,
    /// Largest file a local user may upload, in MiB (default 2048).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_file_mib: Option<u64>,
    /// Encrypted file bytes one local user may have stored at once, in MiB (default 8192).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    file_quota_mib: Option<u64>,
    /// Messages one user's mailbox may hold (default 10000); past it, senders are told the
    /// mailbox is full and their nodes retry.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    mailbox_max_messages: Option<u64>,
    /// Bytes one user's mailbox may hold, in MiB (default 64).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    mailbox_max_mib: Option<u64>,
    /// Largest message taken, in KiB of padded text (default and most 16, the protocol's
    /// largest bucket; larger content goes as files).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
    max_message_kib: Option<u64>,
    /// Longest a message may be held, in days (default and most 30).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=30))]
    max_ttl_days: Option<u64>,
    /// Count loopback connections against the per-address limit too (for testing that limit).
    #[arg(long, hide = true)]
    limit_loopback: bool,
    /// Abort after making the N-th device send durable, before answering it (for testing
    /// lost answers).
    #[arg(long, hide = true)]
    crash_after_sends: Option<u32>,
    /// Encrypted file bytes all local users together may have stored, in GiB (default 256).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    file_storage_gib: Option<u64>,
    /// Send no push wake-ups, and refuse push registrations.
    #[arg(long)]
    no_push: bool,
    /// Where push services can reach you, the operator: a mailto: or https: URL sent with
    /// every wake-up (the VAPID contact).
    #[arg(long)]
    push_contact: Option<String>,
    /// Wait a random time of up to this many seconds before each wake-up, so its timing tells
    /// the push service less about when mail arrived (default 0).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=3600))]
    push_delay_max_secs: Option<u64>,
    /// Accept push endpoints on loopback addresses: only for tests against a local push
    /// service. Private and link-local addresses stay refused.
    #[arg(long)]
    push_allow_loopback: bool,
    /// Relay this node's users' calls (TURN over UDP) on this address, `IP:PORT` (for
    /// example 203.0.113.5:3478): the address their devices reach this node at, not a
    /// wildcard. Without it this node's users cannot make or take calls.
    #[arg(long)]
    turn_listen: Option<std::net::SocketAddr>,
    /// Calls one user may relay at once (default 4).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    turn_calls_per_user: Option<u64>,
    /// Calls this node relays at once, for all its users (default 256).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    turn_calls: Option<u64>,
    /// Let calls reach peers on loopback addresses: only for tests on one machine. Private
    /// and link-local peers stay refused.
    #[arg(long)]
    turn_allow_loopback: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    registration_open: Option<bool>,
    registration: Option<String>,
    mailbox_max_messages: Option<u64>,
    mailbox_max_mib: Option<u64>,
    max_message_kib: Option<u64>,
    max_ttl_days: Option<u64>,
    metrics_listen: Option<std::net::SocketAddr>,
    backup_dir: Option<PathBuf>,
    backups_keep: Option<u64>,
    log_level: Option<String>,
    db_memory_mib: Option<u64>,
    db_log_file_mib: Option<u64>,
    db_log_files_kept: Option<u64>,
    db_wal_recovery: Option<String>,
    send_burst: Option<u64>,
    sends_per_second: Option<u64>,
    max_file_mib: Option<u64>,
    file_quota_mib: Option<u64>,
    file_storage_gib: Option<u64>,
    push: Option<bool>,
    push_contact: Option<String>,
    push_delay_max_secs: Option<u64>,
    turn_listen: Option<std::net::SocketAddr>,
    turn_calls_per_user: Option<u64>,
    turn_calls: Option<u64>,
}

#[derive(Args)]
pub struct AdminArgs {
    /// The node's data directory (as given to `hestia node run --data-dir`; default the
    /// platform's, ~/.local/share/hestia/node on Linux).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print what the command shows as JSON, one object per line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Accounts, mail held and queued, files, devices and peers connected, version, uptime.
    Status,
    /// Local accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Registration invites (for `--registration invite`).
    #[command(subcommand)]
    Invite(InviteCmd),
    /// Which nodes this node exchanges mail with.
    #[command(subcommand)]
    Federation(FederationCmd),
    /// Online backups of the node's database.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Set the running node's log filter, for example `debug` or `info,hestia_node=trace`.
    LogLevel {
        /// A tracing filter (`error`, `warn`, `info`, `debug`, `trace`, or per-module).
        level: String,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Every account, oldest first.
    List,
    /// One account.
    Show {
        /// The account's id (64 hex digits, its address, or a unique prefix of 8 or more).
        user: String,
    },
    /// Stop an account from sending or fetching (its mail is kept); its devices are told.
    Suspend {
        /// The account's id (or a unique prefix of 8 or more hex digits).
        user: String,
        /// Why, for other admins (at most 200 bytes).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Lift a suspension.
    Unsuspend {
        /// The account's id (or a unique prefix of 8 or more hex digits).
        user: String,
    },
    /// Delete an account and everything held for it: mailbox, prekeys, push
    /// subscriptions, files, delivery records.
    Delete {
        /// The account's id (or a unique prefix of 8 or more hex digits).
        user: String,
        /// Delete without asking (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum InviteCmd {
    /// Make an invite token; it is shown once.
    Create {
        /// Accounts it may create.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it stays valid: for example 30m, 12h, 7d (default: until used up).
        #[arg(long)]
        expires: Option<String>,
        /// What it is for, for other admins (at most 200 bytes).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Every invite, with its state.
    List,
    /// Make an invite unusable.
    Revoke {
        /// The invite's id from `invite list` (8 or more of its hex digits).
        id: String,
    },
}

#[derive(Subcommand)]
enum FederationCmd {
    /// Refuse a node in both directions: nothing from it is taken, nothing goes to it.
    Deny {
        /// The node's peer id.
        node: String,
    },
    /// Put a node on the allow list; once any node is on it, only listed nodes federate.
    Allow {
        /// The node's peer id.
        node: String,
    },
    /// Take a node off either list.
    Clear {
        /// The node's peer id.
        node: String,
    },
    /// Both lists.
    List,
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Take a consistent backup while the node runs (older ones beyond --backups-keep go).
    Create,
    /// The backups taken.
    List,
    /// Restore a backup into a scratch directory and decode every entry.
    Verify {
        /// Which backup (default the newest).
        #[arg(long)]
        id: Option<u32>,
    },
    /// Restore a backup as the node's database: the node must be stopped. The current
    /// database is moved aside, not deleted; stored one-time prekeys are dropped so none is
    /// handed out twice (devices publish fresh ones).
    Restore {
        /// Which backup (default the newest).
        #[arg(long)]
        id: Option<u32>,
        /// Where the backups are, if not in the data directory (the node's --backup-dir).
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
}

/// `7d`, `12h`, `30m`, `90s` as seconds.
fn parse_duration(text: &str) -> Result<u64> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("{text:?} is not a duration such as 30m, 12h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("{text:?} is not a duration such as 30m, 12h or 7d"),
    };
    n.checked_mul(secs)
        .filter(|s| *s > 0 && *s <= 10 * 365 * 86_400)
        .with_context(|| format!("{text:?}: give a duration from 1s to 10 years"))
}

fn when(ms: u64) -> String {
    inspect::utc(ms)
}

fn print_status(s: &AdminStatus) {
    println!(
        "node {} (hestia {}), up {} s",
        s.node_id, s.version, s.uptime_secs
    );
    println!(
        "registration: {}; accounts {} ({} suspended), {} online on {} device connections",
        s.registration, s.accounts, s.suspended, s.online_users, s.connected_devices
    );
    println!("peers connected: {}", s.connected_peers);
    println!(
        "mailboxes: {} envelopes, {} bytes; outboxes: {} envelopes for {} nodes",
        s.mailbox_envelopes, s.mailbox_bytes, s.outbox_envelopes, s.outbox_destinations
    );
    println!("files: {} blobs, {} bytes", s.blobs, s.blob_bytes);
    println!(
        "invites: {}; federation: {} denied, {} allowed",
        s.invites, s.federation_denied, s.federation_allowed
    );
}

fn print_user(u: &UserInfo) {
    let state = match &u.suspended {
        Some(s) if s.note.is_empty() => format!("suspended since {}", when(s.at)),
        Some(s) => format!("suspended since {} ({})", when(s.at), s.note),
        None if u.online => "online".into(),
        None => "offline".into(),
    };
    println!(
        "{}  created {}  {state}  mail {} ({} bytes)  one-time prekeys {}  push {}",
        u.user,
        when(u.created_at),
        u.mailbox_envelopes,
        u.mailbox_bytes,
        u.one_time_prekeys,
        u.push_subscriptions
    );
}

fn print_invite(i: &InviteInfo) {
    let expires = i.expires_at.map_or("never".into(), when);
    let note = if i.note.is_empty() {
        String::new()
    } else {
        format!("  {}", i.note)
    };
    println!(
        "{}  {}  used {}/{}  expires {expires}{note}",
        i.id, i.state, i.used, i.uses
    );
}

fn print_rule(f: &FederationEntry) {
    println!("{:?}  {}  since {}", f.rule, f.node, when(f.at));
}

fn print_backup(b: &BackupInfo) {
    println!(
        "backup {}  taken {}  {} bytes in {} files",
        b.id,
        when((b.created_at.max(0) as u64) * 1000),
        b.bytes,
        b.files
    );
}

fn print_response(r: AdminResponse, as_json: bool) -> Result<()> {
    if let AdminResponse::Error(e) = &r {
        bail!("{e}");
    }
    if as_json {
        let lines: Vec<serde_json::Value> = match &r {
            AdminResponse::Users(list) => list.iter().map(|u| serde_json::json!(u)).collect(),
            AdminResponse::Invites(list) => list.iter().map(|i| serde_json::json!(i)).collect(),
            AdminResponse::Federation(list) => list.iter().map(|f| serde_json::json!(f)).collect(),
            AdminResponse::Backups(list) => list.iter().map(|b| serde_json::json!(b)).collect(),
            AdminResponse::Status(s) => vec![serde_json::json!(s)],
            AdminResponse::User(u) => vec![serde_json::json!(u)],
            AdminResponse::Done(m) => vec![serde_json::json!({ "done": m })],
            AdminResponse::InviteCreated { token, invite } => {
                vec![serde_json::json!({ "token": token, "invite": invite })]
            }
            AdminResponse::Error(_) => unreachable!("returned above"),
        };
        for l in lines {
            crate::json::print(l);
        }
        return Ok(());
    }
    match r {
        AdminResponse::Status(s) => print_status(&s),
        AdminResponse::Users(list) if list.is_empty() => println!("no accounts"),
        AdminResponse::Users(list) => list.iter().for_each(print_user),
        AdminResponse::User(u) => print_user(&u),
        AdminResponse::Done(m) => println!("{m}"),
        AdminResponse::InviteCreated { token, invite } => {
            println!("invite {} made; its token (shown only now):", invite.id);
            println!("{token}");
            println!(
                "use: hestia account create --node <this node> --name <name> --invite {token}"
            );
        }
        AdminResponse::Invites(list) if list.is_empty() => println!("no invites"),
        AdminResponse::Invites(list) => list.iter().for_each(print_invite),
        AdminResponse::Federation(list) if list.is_empty() => {
            println!("no nodes denied or allowed: this node federates with every node")
        }
        AdminResponse::Federation(list) => list.iter().for_each(print_rule),
        AdminResponse::Backups(list) if list.is_empty() => println!("no backups yet"),
        AdminResponse::Backups(list) => list.iter().for_each(print_backup),
        AdminResponse::Error(_) => unreachable!("returned above"),
    }
    Ok(())
}

fn confirm_delete(user: &str, yes: bool) -> Result<()> {
    use std::io::IsTerminal;
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("deleting an account cannot be undone: add --yes to confirm");
    }
    eprint!("delete account {user} and everything held for it? type yes: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not deleted");
    }
    Ok(())
}

async fn admin(args: AdminArgs, as_json: bool) -> Result<()> {
    let as_json = as_json || args.json;
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => default_dir("node")?,
    };
    let request = match args.cmd {
        AdminCmd::Status => AdminRequest::Status,
        AdminCmd::User(UserCmd::List) => AdminRequest::UserList,
        AdminCmd::User(UserCmd::Show { user }) => AdminRequest::UserShow { user },
        AdminCmd::User(UserCmd::Suspend { user, note }) => AdminRequest::UserSuspend { user, note },
        AdminCmd::User(UserCmd::Unsuspend { user }) => AdminRequest::UserUnsuspend { user },
        AdminCmd::User(UserCmd::Delete { user, yes }) => {
            confirm_delete(&user, yes)?;
            AdminRequest::UserDelete { user }
        }
        AdminCmd::Invite(InviteCmd::Create {
            uses,
            expires,
            note,
        }) => AdminRequest::InviteCreate {
            uses,
            expires_in_secs: expires.as_deref().map(parse_duration).transpose()?,
            note,
        },
        AdminCmd::Invite(InviteCmd::List) => AdminRequest::InviteList,
        AdminCmd::Invite(InviteCmd::Revoke { id }) => AdminRequest::InviteRevoke { id },
        AdminCmd::Federation(FederationCmd::Deny { node }) => AdminRequest::FederationDeny { node },
        AdminCmd::Federation(FederationCmd::Allow { node }) => {
            AdminRequest::FederationAllow { node }
        }
        AdminCmd::Federation(FederationCmd::Clear { node }) => {
            AdminRequest::FederationClear { node }
        }
        AdminCmd::Federation(FederationCmd::List) => AdminRequest::FederationList,
        AdminCmd::Backup(BackupCmd::Create) => AdminRequest::BackupCreate,
        AdminCmd::Backup(BackupCmd::List) => AdminRequest::BackupList,
        AdminCmd::Backup(BackupCmd::Verify { id }) => AdminRequest::BackupVerify { id },
        AdminCmd::Backup(BackupCmd::Restore { id, backup_dir }) => {
            return restore(&data_dir, backup_dir, id);
        }
        AdminCmd::LogLevel { level } => AdminRequest::LogLevel { level },
    };
    let response = admin_socket::call(&data_dir, &request).await?;
    print_response(response, as_json)
}

/// Restores a backup into a stopped node's data directory (not through the socket: no node
/// may hold the database).
fn restore(data_dir: &Path, backup_dir: Option<PathBuf>, id: Option<u32>) -> Result<()> {
    if data_dir.join(admin_socket::SOCKET_NAME).exists()
        && std::os::unix::net::UnixStream::connect(data_dir.join(admin_socket::SOCKET_NAME)).is_ok()
    {
        bail!("the node is running: stop it first (restore replaces its database)");
    }
    let backups = backup_dir.unwrap_or_else(|| data_dir.join("backups"));
    let r = hestia_store::backup::restore(&backups, id, &data_dir.join("db"))?;
    println!("restored backup {}", r.id);
    if let Some(aside) = r.moved_aside {
        println!("the database that was there is kept at {}", aside.display());
    }
    println!(
        "dropped {} one-time prekeys (devices publish fresh ones); mail acknowledged after the \
         backup was taken may be delivered again, and devices drop it as a duplicate",
        r.dropped_one_time_prekeys
    );
    Ok(())
}

fn read_file(path: Option<&Path>) -> Result<NodeFile> {
    match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        }
        None => Ok(NodeFile::default()),
    }
}

fn file_registration(file: &NodeFile) -> Result<Registration> {
    match (&file.registration, file.registration_open) {
        (Some(r), _) => r.parse().map_err(anyhow::Error::msg),
        (None, Some(false)) => Ok(Registration::Closed),
        (None, _) => Ok(Registration::Open),
    }
}

/// Resolves when the node should stop: Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// On each SIGHUP, reads the config file again and hands the node what may change, as a
/// restart would: a setting given as a flag stays as the flag says.
fn reload_on_hangup(
    config: Option<PathBuf>,
    registration_flag: bool,
    reloads: tokio::sync::mpsc::Sender<Reload>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let file = match read_file(config.as_deref()) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "config not reloaded");
                    continue;
                }
            };
            let registration = match file_registration(&file) {
                Ok(_) if registration_flag => None,
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "registration not reloaded");
                    None
                }
            };
            let reload = Reload {
                registration,
                log_level: file.log_level,
            };
            if reloads.send(reload).await.is_err() {
                return;
            }
        }
    });
}

pub async fn run(cmd: NodeCmd, log: Option<LogControl>, as_json: bool) -> Result<()> {
    match cmd {
        NodeCmd::Run(args) => {
            let config_path = args.config.clone();
            let registration_flag = args.registration.is_some() || args.closed_registration;
            let mut config = node_config(*args)?;
            config.log_control = log.clone();
            if let (Some(level), Some(set)) =
                (read_file(config_path.as_deref())?.log_level, log.as_ref())
            {
                set(&level)
                    .map_err(anyhow::Error::msg)
                    .context("log_level in the config")?;
            }
            let node = Node::start(config)?;
            println!("node {} started", node.peer_id());
            reload_on_hangup(config_path, registration_flag, node.reloads());
            node.run(stop_signal()).await?;
            Ok(())
        }
        NodeCmd::Admin(args) => admin(args, as_json).await,
        NodeCmd::Inspect { data_dir } => inspect::print(&data_dir),
    }
}

/// The database settings of the config file, each checked against its range.
fn db_tuning(file: &NodeFile) -> Result<DbTuning> {
    use hestia_store::tuning::{MAX_LOG_FILES_KEPT, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES};
    let d = DbTuning::default();
    let in_range = |key: &str, v: Option<u64>, lo: u64, hi: u64| -> Result<Option<u64>> {
        match v {
            Some(n) if !(lo..=hi).contains(&n) => {
                bail!("{key} in the config must be from {lo} to {hi}, not {n}")
            }
            v => Ok(v),
        }
    };
    let mib = 1u64 << 20;
    Ok(DbTuning {
        memory_bytes: in_range(
            "db_memory_mib",
            file.db_memory_mib,
            MIN_MEMORY_BYTES as u64 / mib,
            MAX_MEMORY_BYTES as u64 / mib,
        )?
        .map_or(d.memory_bytes, |n| (n * mib) as usize),
        log_file_bytes: in_range("db_log_file_mib", file.db_log_file_mib, 1, 1024)?
            .map_or(d.log_file_bytes, |n| (n * mib) as usize),
        log_files_kept: in_range(
            "db_log_files_kept",
            file.db_log_files_kept,
            1,
            MAX_LOG_FILES_KEPT as u64,
        )?
        .map_or(d.log_files_kept, |n| n as usize),
        wal_recovery: match &file.db_wal_recovery {
            Some(s) => s.parse().context("db_wal_recovery in the config")?,
            None => d.wal_recovery,
        },
    })
}

fn node_config(args: NodeRunArgs) -> Result<NodeConfig> {
    let file = read_file(args.config.as_deref())?;
    let db = db_tuning(&file)?;
    let registration = if args.closed_registration {
        Registration::Closed
    } else {
        match args.registration {
            Some(r) => r,
            None => file_registration(&file)?,
        }
    };
    let parse = |v: &[String]| -> Result<Vec<Multiaddr>> {
        v.iter()
            .map(|s| s.parse().with_context(|| format!("bad multiaddr {s:?}")))
            .collect()
    };
    let data_dir = match args.data_dir.or(file.data_dir) {
        Some(d) => d,
        None => default_dir("node")?,
    };
    let mut listen = if args.listen.is_empty() {
        parse(&file.listen)?
    } else {
        args.listen
    };
    if listen.is_empty() {
        listen.push("/ip4/0.0.0.0/tcp/4001".parse()?);
        listen.push("/ip4/0.0.0.0/udp/4001/quic-v1".parse()?);
    }
    let bootstrap = if args.bootstrap.is_empty() {
        parse(&file.bootstrap)?
    } else {
        args.bootstrap
    };
    Ok(NodeConfig {
        data_dir,
        listen,
        bootstrap,
        registration,
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        backup_dir: args.backup_dir.or(file.backup_dir),
        backups_keep: args
            .backups_keep
            .or(file.backups_keep)
            .map_or(hestia_node::driver::BACKUPS_KEPT, |n| n as usize),
        db,
        log_control: None,
        limit_loopback: args.limit_loopback,
        crash_after_sends: args.crash_after_sends,
        turn_listen: args.turn_listen.or(file.turn_listen),
        turn: {
            let d = hestia_node::turn::server::TurnSettings::default();
            hestia_node::turn::server::TurnSettings {
                max_allocations: args
                    .turn_calls
                    .or(file.turn_calls)
                    .map_or(d.max_allocations, |n| n as usize),
                max_allocations_per_user: args
                    .turn_calls_per_user
                    .or(file.turn_calls_per_user)
                    .map_or(d.max_allocations_per_user, |n| n as usize),
                allow_loopback_peers: args.turn_allow_loopback,
                ..d
            }
        },
        push: {
            let contact = args.push_contact.or(file.push_contact);
            if let Some(c) = &contact
                && !(c.starts_with("mailto:") || c.starts_with("https://"))
            {
                bail!("--push-contact must be a mailto: or https:// URL, not {c:?}");
            }
            PushSettings {
                enabled: !args.no_push && file.push.unwrap_or(true),
                allow_loopback: args.push_allow_loopback,
                max_delay_ms: args
                    .push_delay_max_secs
                    .or(file.push_delay_max_secs)
                    .unwrap_or(0)
                    .min(3600)
                    * 1000,
                contact: contact.unwrap_or_else(|| PushSettings::default().contact),
            }
        },
        limits: hestia_node::relay::Limits {
            send: hestia_node::relay::SendLimit {
                burst: args
                    .send_burst
                    .or(file.send_burst)
                    .unwrap_or(hestia_node::relay::SEND_BURST),
                per_second: args
                    .sends_per_second
                    .or(file.sends_per_second)
                    .unwrap_or(hestia_node::relay::SENDS_PER_SECOND)
                    .max(1),
            },
            fed: hestia_node::relay::FED_LIMIT,
            stored_per_node: hestia_node::relay::MAX_STORED_BYTES_PER_NODE,
            // The sealed size of the largest file: its padding and tags count too.
            max_blob_bytes: match args.max_file_mib.or(file.max_file_mib) {
                Some(mib) => BlobSpec::of_file(mib << 20, [0; 32], 0).total_bytes(),
                None => hestia_node::relay::MAX_BLOB_BYTES,
            },
            blob_quota: args
                .file_quota_mib
                .or(file.file_quota_mib)
                .map_or(hestia_node::relay::BLOB_QUOTA_PER_USER, |mib| mib << 20),
            blob_total: args
                .file_storage_gib
                .or(file.file_storage_gib)
                .map_or(hestia_node::relay::MAX_BLOB_STORED_BYTES, |gib| gib << 30),
            mailbox_envelopes: args
                .mailbox_max_messages
                .or(file.mailbox_max_messages)
                .map_or(hestia_node::relay::MAX_MAILBOX_ENVELOPES, |n| n as usize),
            mailbox_bytes: args
                .mailbox_max_mib
                .or(file.mailbox_max_mib)
                .map_or(hestia_node::relay::MAX_MAILBOX_BYTES, |mib| mib << 20),
            max_envelope_bytes: args.max_message_kib.or(file.max_message_kib).map_or(
                hestia_protocol::envelope::MAX_BODY_BYTES,
                |kib| {
                    // The padded text plus the seal around it.
                    use hestia_protocol::envelope::{MAX_BODY_BYTES, PADDING_BUCKETS};
                    let seal = MAX_BODY_BYTES - PADDING_BUCKETS[PADDING_BUCKETS.len() - 1];
                    ((kib as usize) << 10) + seal
                },
            ),
            max_ttl_ms: args
                .max_ttl_days
                .or(file.max_ttl_days)
                .map_or(hestia_protocol::envelope::MAX_TTL_MS, |d| d * 86_400_000),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_config_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "data_dir = \"/tmp/x\"\nlisten = [\"/ip4/127.0.0.1/tcp/5000\"]\n\
             bootstrap = [\"/ip4/127.0.0.1/tcp/4000/p2p/12D3KooWGzXw9PvnqVxGJrG4Z1oB2LBmFm3s2oHU1Fh6FhFj7y3e\"]\n\
             registration_open = false\n",
        )
        .unwrap();
        let c = node_config(NodeRunArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.listen[0].to_string(), "/ip4/127.0.0.1/tcp/5000");
        assert_eq!(c.bootstrap.len(), 1);
        assert_eq!(c.registration, Registration::Closed);
        // Flags win over the file.
        let args = NodeRunArgs {
            config: Some(file.clone()),
            data_dir: Some("/tmp/y".into()),
            listen: vec!["/ip4/127.0.0.1/tcp/6000".parse().unwrap()],
            ..Default::default()
        };
        let c = node_config(args).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/y"));
        assert_eq!(c.listen[0].to_string(), "/ip4/127.0.0.1/tcp/6000");

        std::fs::write(&file, "listen = [\"not a multiaddr\"]\n").unwrap();
        let e = node_config(NodeRunArgs {
            config: Some(file.clone()),
            ..Default::default()
        });
        assert!(format!("{:#}", e.err().unwrap()).contains("bad multiaddr"));
        std::fs::write(&file, "lissten = []\n").unwrap();
        let e = node_config(NodeRunArgs {
            config: Some(file),
            ..Default::default()
        });
        assert!(format!("{:#}", e.err().unwrap()).contains("unknown field"));
    }

    #[test]
    fn database_settings_in_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        let config = |text: &str| {
            std::fs::write(&file, text).unwrap();
            node_config(NodeRunArgs {
                config: Some(file.clone()),
                ..Default::default()
            })
        };
        let c = config("").unwrap();
        assert_eq!(c.db, DbTuning::default());
        let c = config(
            "db_memory_mib = 256
db_log_file_mib = 8
db_log_files_kept = 10
             db_wal_recovery = \"absolute\"
",
        )
        .unwrap();
        assert_eq!(c.db.memory_bytes, 256 << 20);
        assert_eq!(c.db.log_file_bytes, 8 << 20);
        assert_eq!(c.db.log_files_kept, 10);
        assert_eq!(
            c.db.wal_recovery,
            hestia_store::tuning::WalRecovery::Absolute
        );
        let e = config(
            "db_memory_mib = 1
",
        )
        .err()
        .unwrap();
        assert_eq!(
            format!("{e:#}"),
            "db_memory_mib in the config must be from 8 to 65536, not 1"
        );
        let e = config(
            "db_wal_recovery = \"skip\"
",
        )
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("point-in-time, absolute or tolerate-tail"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * 86_400);
        assert_eq!(parse_duration("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("3").unwrap(), 3 * 86_400);
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("7y").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999d").is_err());
    }
}
