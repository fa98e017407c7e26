//! `hestia`: run a node or a bootstrap node, manage an account, send and read messages, and run
//! the demo. Client commands keep their state under `--home` (default: the platform data
//! directory); node commands under `--data-dir`.

mod bench;
mod bench_calls;
mod bench_chat;
mod bench_devices;
mod bench_files;
mod bench_sessions;
mod bench_storage;
mod call;
mod chat;
mod contact;
mod demo;
mod files;
mod inbox;
mod inspect;
mod json;
mod node;
mod push;
mod real;
mod sim;
mod sound;
mod unlock;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hestia_node::client::{Device, InboxEvent};
use hestia_store::client::{CallOutcome, Direction, MessageState, StoredMessage};
use libp2p::Multiaddr;
use node::NodeCmd;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hestia",
    version,
    about = "Hestia: a privacy-first federated messenger"
)]
struct Cli {
    /// Where this device keeps its identity, contacts and history, for the device commands
    /// (account, contact, send, inbox, status, file, push, call, chat); default
    /// ~/.local/share/hestia/client on Linux. A node keeps its data in its --data-dir.
    #[arg(long, env = "HESTIA_HOME")]
    home: Option<PathBuf>,
    /// Print what a reading command shows as JSON (the same as that command's own --json).
    #[arg(long)]
    json: bool,
    /// Colours in help, errors, log lines and `hestia chat`: auto (only on a terminal, and
    /// not when NO_COLOR is set), always, or never.
    #[arg(long, value_enum, default_value_t = ColorWhen::Auto, global = true, value_name = "WHEN")]
    color: ColorWhen,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ColorWhen {
    Auto,
    Always,
    Never,
}

impl ColorWhen {
    /// Whether output to a stream that is (or is not) a terminal gets colours. `auto` follows
    /// the NO_COLOR convention (set and not empty: no colours) and a dumb terminal.
    fn enabled(self, terminal: bool) -> bool {
        match self {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => {
                terminal
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
            }
        }
    }

    /// The choice as given on the command line (`--color X` or `--color=X`, the last one
    /// wins), read before clap parses so that its own help and errors follow it too.
    fn from_args(args: &[std::ffi::OsString]) -> ColorWhen {
        let mut when = ColorWhen::Auto;
        let mut it = args.iter().map(|a| a.to_string_lossy());
        while let Some(a) = it.next() {
            if a == "--" {
                break;
            }
            let value = match a.strip_prefix("--color") {
                Some("") => it.next().map(|v| v.into_owned()),
                Some(v) if v.starts_with('=') => Some(v[1..].to_string()),
                _ => None,
            };
            match value.as_deref() {
                Some("always") => when = ColorWhen::Always,
                Some("never") => when = ColorWhen::Never,
                Some("auto") => when = ColorWhen::Auto,
                _ => {}
            }
        }
        when
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole story in one process on loopback: a bootstrap node, two nodes, two users.
    Demo,
    /// Run or inspect a node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Run a bootstrap node.
    #[command(subcommand)]
    Bootstrap(BootstrapCmd),
    /// Create or show this device's account.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Manage contacts.
    #[command(subcommand)]
    Contact(contact::ContactCmd),
    /// Send a text message, or a file, to a contact.
    Send {
        /// The contact's local name (see `hestia contact list`).
        contact: String,
        /// The message text (with --file: not used, see --caption).
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Send this file, encrypted on this device and uploaded to your home node first.
        /// Interrupted uploads continue when the same command is run again.
        #[arg(long)]
        file: Option<PathBuf>,
        /// With --file: a caption shown with it.
        #[arg(long, requires = "file", default_value = "")]
        caption: String,
        /// Seconds to wait for the home node to report the message delivered to the recipient's
        /// node (0: do not wait).
        #[arg(long, default_value_t = 3)]
        wait: u64,
        /// Seconds the message may wait for delivery before it expires.
        #[arg(long, default_value_t = 7 * 24 * 3600, value_parser = clap::value_parser!(u64).range(1..=30 * 24 * 3600))]
        ttl: u64,
    },
    /// Fetch and show incoming messages.
    Inbox {
        /// Stay connected and print messages as they arrive.
        #[arg(long)]
        follow: bool,
        /// Show the whole history, not only what just arrived.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: json::JsonFlag,
    },
    /// Show the delivery state of sent messages.
    Status {
        #[command(flatten)]
        out: json::JsonFlag,
    },
    /// Files sent and received.
    #[command(subcommand)]
    File(FileCmd),
    /// Push wake-ups for this device (Web Push / UnifiedPush).
    Push(push::PushArgs),
    /// Ring a contact (voice, end-to-end encrypted, relayed by your node), or wait for a call
    /// with --listen.
    Call(call::CallArgs),
    /// The terminal client: contacts, conversations, delivery marks, key warnings, safety
    /// numbers; keyboard only (? for help), works over SSH.
    Chat,
    /// Run network simulations (see docs/simulations.md).
    #[command(subcommand)]
    Sim(sim::SimCmd),
    /// Measure relay throughput and latency on loopback beside raw baselines (docs/benchmarks.md).
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum FileCmd {
    /// Download a received file through your home node, decrypt and verify it, and put it in
    /// place. Interrupted downloads continue when run again.
    Get {
        /// The file's id as `hestia inbox` or `hestia file list` shows it (a prefix will do).
        id: String,
        /// Where to put it (a directory or a file name); default: its own name, here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Files sent and received, and where each stands.
    List {
        #[command(flatten)]
        out: json::JsonFlag,
    },
}

#[derive(Subcommand)]
enum BootstrapCmd {
    /// Run a bootstrap node until interrupted.
    Run {
        /// Where the bootstrap node keeps its key (default: the platform data directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on (repeatable), such as /ip4/0.0.0.0/tcp/4000.
        #[arg(long)]
        listen: Vec<Multiaddr>,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an identity on this device and register it with a home node.
    Create {
        /// The home node's address, ending in /p2p/<peer id>.
        #[arg(long)]
        node: Multiaddr,
        /// The name you go by (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// Encrypt everything this device stores (identity, sessions, contacts, history)
        /// under a passphrase, asked now and whenever a command opens the device
        /// (HESTIA_PASSPHRASE for scripts).
        #[arg(long)]
        passphrase: bool,
        /// An invite token from the node's admin (nodes that take new accounts by invite
        /// only).
        #[arg(long)]
        invite: Option<String>,
    },
    /// Encrypt this device's stored data under a passphrase (asked twice, or
    /// HESTIA_PASSPHRASE).
    Encrypt,
    /// Change the passphrase of an encrypted device (the new one asked twice, or
    /// HESTIA_NEW_PASSPHRASE).
    ChangePassphrase,
    /// Show your address and contact card.
    Show {
        /// Print only the address.
        #[arg(long)]
        address: bool,
        #[command(flatten)]
        out: json::JsonFlag,
    },
    /// Show or set delivery receipts (whether your device tells senders it got their messages)
    ///
    /// Receipts leave after a random delay, batched per contact, so your node cannot pair a
    /// receipt with the message it answers by timing alone; see docs/threat-model.md.
    Receipts {
        /// Turn receipts on or off.
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
        /// Longest delay before a batch of receipts leaves, in seconds (a batch leaves between
        /// half of this and this after its first message).
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=3600))]
        max_delay: Option<u64>,
    },
}

fn default_dir(sub: &str) -> Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("org", "hestia", "hestia")
        .context("no home directory to keep data in; pass --home or --data-dir")?;
    Ok(dirs.data_dir().join(sub))
}

fn home(cli_home: &Option<PathBuf>) -> Result<PathBuf> {
    match cli_home {
        Some(h) => Ok(h.clone()),
        None => default_dir("client"),
    }
}

/// Parses the command line; `--home` given to a command that keeps no device data (a node,
/// the demo, a simulation) is refused rather than ignored (HESTIA_HOME in the environment is
/// left alone: it is meant for the device commands run from that shell).
fn parse_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> std::result::Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let choice = match ColorWhen::from_args(&args) {
        ColorWhen::Always => clap::ColorChoice::Always,
        ColorWhen::Never => clap::ColorChoice::Never,
        ColorWhen::Auto if ColorWhen::Auto.enabled(true) => clap::ColorChoice::Auto,
        ColorWhen::Auto => clap::ColorChoice::Never,
    };
    let matches = Cli::command().color(choice).try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let on_command_line =
        matches.value_source("home") == Some(clap::parser::ValueSource::CommandLine);
    let device_command = !matches!(
        cli.command,
        Command::Demo
            | Command::Node(_)
            | Command::Bootstrap(_)
            | Command::Sim(_)
            | Command::Bench(_)
    );
    if on_command_line && !device_command {
        return Err(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "--home is for device commands; a node or bootstrap node keeps its data in its \
             --data-dir, and the demo, simulations and benchmarks in directories of their own",
        ));
    }
    Ok(cli)
}

fn main() {
    // Everything this process creates (device and node databases, keys, logs it writes) is
    // for its owner only: identity seeds, sessions and history must not be readable by other
    // local users. Set before any file is opened, so RocksDB's files are 0600 from birth.
    // SAFETY: umask only sets the process's file mode mask; no memory is involved.
    unsafe {
        libc::umask(0o077);
    }
    let cli = match parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other error here: clap's message without its usage block
            // (a message ending in ':' continues on the next lines, such as which arguments
            // are missing).
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let line = if line.is_empty() {
                "invalid arguments".to_string()
            } else {
                line.join(" ")
            };
            eprintln!("{line} (see --help)");
            std::process::exit(2);
        }
    };
    let node_like = matches!(
        cli.command,
        Command::Node(NodeCmd::Run(_)) | Command::Bootstrap(_)
    );
    let log_json = matches!(&cli.command, Command::Node(NodeCmd::Run(a)) if a.log_format == node::LogFormat::Json);
    let default_filter = if node_like {
        // request-response warns once per stream it drops at capacity: a peer would choose how
        // much the node logs. Refused frames are summarised by Hestia's codec instead.
        "info,libp2p=warn,libp2p_request_response=error"
    } else {
        "warn"
    };
    use std::io::IsTerminal;
    let ansi = cli.color.enabled(std::io::stderr().is_terminal());
    chat::ui::set_colour(cli.color.enabled(std::io::stdout().is_terminal()));
    let log = init_logging(default_filter, log_json, ansi);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli, log)) {
        // One line: the error and its causes.
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Logs to stderr, as text (coloured if `ansi`: see `--color`) or JSON lines, through a filter
/// that `RUST_LOG` sets and that a running node may change (the returned control).
fn init_logging(default_filter: &str, json: bool, ansi: bool) -> hestia_node::driver::LogControl {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init();
    } else {
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .init();
    }
    std::sync::Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| format!("not a log filter: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

async fn run(cli: Cli, log: hestia_node::driver::LogControl) -> Result<()> {
    match cli.command {
        Command::Demo => demo::run().await,
        Command::Bench(args) => bench::run(args).await,
        Command::Sim(cmd) => sim::run(cmd).await,
        Command::Node(cmd) => node::run(cmd, Some(log), cli.json).await,
        Command::Bootstrap(BootstrapCmd::Run { data_dir, listen }) => {
            let dir = match data_dir {
                Some(d) => d,
                None => default_dir("bootstrap")?,
            };
            let listen = if listen.is_empty() {
                vec![
                    "/ip4/0.0.0.0/tcp/4000".parse()?,
                    "/ip4/0.0.0.0/udp/4000/quic-v1".parse()?,
                ]
            } else {
                listen
            };
            let b = hestia_bootstrap::Bootstrap::start(&dir, &listen)?;
            println!("bootstrap node {} started", b.peer_id());
            b.run(shutdown_signal()).await;
            Ok(())
        }
        Command::Account(AccountCmd::Create {
            node,
            name,
            passphrase,
            invite,
        }) => {
            let dir = home(&cli.home)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let pass = match passphrase {
                true => Some(unlock::new_passphrase(unlock::ENV)?),
                false => None,
            };
            let pass = pass.as_ref().map(|p| p.as_bytes());
            let d = Device::create_with(&dir, &name, &node, pass, invite.as_deref()).await?;
            println!("account created: {}", d.name());
            println!("address: {}", d.address());
            println!("fingerprint: {}", d.address().user.fingerprint());
            print!("{}", d.address().card(d.name()));
            Ok(())
        }
        Command::Account(AccountCmd::Encrypt) => unlock::set(&home(&cli.home)?, false),
        Command::Account(AccountCmd::ChangePassphrase) => unlock::set(&home(&cli.home)?, true),
        Command::Account(AccountCmd::Show { address, out }) => {
            let d = unlock::open_device(&home(&cli.home)?)?;
            if cli.json || out.json {
                json::print(serde_json::json!({
                    "name": d.name(),
                    "address": d.address().to_string(),
                    "key": d.address().user.fingerprint().to_string(),
                    "home_node": d.home_addr().to_string(),
                    "encrypted": d.encryption()?.is_some(),
                }));
            } else if address {
                println!("{}", d.address());
            } else {
                println!("name: {}", d.name());
                println!("address: {}", d.address());
                println!("fingerprint: {}", d.address().user.fingerprint());
                println!("home node: {}", d.home_addr());
                println!("data: {}", unlock::describe(&d)?);
                print!("{}", d.address().card(d.name()));
            }
            Ok(())
        }
        Command::Account(AccountCmd::Receipts { state, max_delay }) => {
            let mut d = unlock::open_device(&home(&cli.home)?)?;
            let mut p = d.receipts_policy();
            if state.is_some() || max_delay.is_some() {
                if let Some(s) = state {
                    p.enabled = s == "on";
                }
                if let Some(secs) = max_delay {
                    p.max_delay_ms = secs * 1000;
                }
                d.set_receipts_policy(p)?;
            }
            if p.enabled {
                println!(
                    "delivery receipts: on, sent {:.0}-{:.0} s after a message arrives, batched per contact",
                    p.max_delay_ms as f64 / 2000.0,
                    p.max_delay_ms as f64 / 1000.0
                );
            } else {
                println!("delivery receipts: off");
            }
            Ok(())
        }
        Command::Contact(cmd) => contact::run(cmd, &home(&cli.home)?, cli.json),
        Command::Send {
            contact,
            text,
            file,
            caption,
            wait,
            ttl,
        } => {
            let mut d = unlock::open_device(&home(&cli.home)?)?;
            let mut conn = d.connect().await?;
            let mut m = match &file {
                Some(path) => {
                    let bar = files::progress_bar("uploading");
                    let mut tick = files::resuming_tick(&bar, "on your node");
                    let m = d
                        .send_file(&mut conn, &contact, path, &caption, &mut tick)
                        .await;
                    bar.finish_and_clear();
                    m?
                }
                None => {
                    files::resume_uploads(&mut d, &mut conn).await;
                    let text = text.unwrap_or_default();
                    d.send_with_ttl(&mut conn, &contact, &text, ttl * 1000)
                        .await?
                }
            };
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
            while m.state == MessageState::Queued && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let all = d.refresh_status(&mut conn).await?;
                if let Some(n) = all.into_iter().find(|x| x.envelope_id == m.envelope_id) {
                    m = n;
                }
            }
            println!(
                "{} to {}: {}",
                m.envelope_id,
                safe(&m.peer_name),
                describe(&m.state)
            );
            if m.state == MessageState::NoSuchUser {
                bail!(
                    "no such user on that node: {} does not know {}",
                    m.peer_node,
                    m.peer_name
                );
            }
            Ok(())
        }
        Command::Inbox { follow, all, out } => {
            inbox::run(&home(&cli.home)?, follow, all, cli.json || out.json).await
        }
        Command::File(FileCmd::Get { id, out }) => files::get(&home(&cli.home)?, &id, out).await,
        Command::File(FileCmd::List { out }) => {
            files::list(&home(&cli.home)?, cli.json || out.json).await
        }
        Command::Push(cmd) => push::run(cmd, &home(&cli.home)?, cli.json).await,
        Command::Call(args) => call::run(args, &home(&cli.home)?, cli.json).await,
        Command::Chat => chat::run(&home(&cli.home)?).await,
        Command::Status { out } => {
            let as_json = cli.json || out.json;
            let mut d = unlock::open_device(&home(&cli.home)?)?;
            let mut conn = d.connect().await?;
            files::resume_uploads(&mut d, &mut conn).await;
            // Receipts arrive as messages: read them first, then ask the node about the rest.
            for ev in d.sync(&mut conn, 0).await? {
                if as_json {
                    json::print(json::event(&d, &ev));
                } else {
                    print_event(&ev);
                }
            }
            for m in d.refresh_status(&mut conn).await? {
                if as_json {
                    json::print(serde_json::json!({
                        "event": "status", "message": json::message(&d, &m),
                    }));
                    continue;
                }
                println!(
                    "{} to {}: {}  \"{}\"",
                    m.envelope_id,
                    safe(&m.peer_name),
                    describe(&m.state),
                    hestia_protocol::display::line(&m.text)
                );
            }
            Ok(())
        }
    }
}

fn describe(s: &MessageState) -> String {
    match s {
        MessageState::Queued => "queued (the home node retries until delivered or expired)".into(),
        MessageState::DeliveredToNode => "delivered to their node".into(),
        MessageState::DeliveredToDevice => "delivered to their device".into(),
        MessageState::Expired => "expired undelivered".into(),
        MessageState::NoSuchUser => "failed: no such user on that node".into(),
        MessageState::Failed(why) => format!("failed: {why}"),
        MessageState::Received => "received".into(),
        MessageState::HeldKeyChanged => "held: sender's key changed (from an older version)".into(),
        MessageState::WaitingForKeys => "waiting on this device: their node did not answer, and \
            a first message needs their prekeys; it goes out on your next send, inbox or status"
            .into(),
        MessageState::Unsent => "saved; it will go out when your node answers (your next send, \
            inbox or status sends it again, as the same message)"
            .into(),
        MessageState::Call(o) => describe_call(o, false),
    }
}

/// How a call went, in words (`incoming`: this device was called).
pub(crate) fn describe_call(o: &CallOutcome, incoming: bool) -> String {
    match o {
        CallOutcome::Talked { secs } => format!("{}:{:02}", secs / 60, secs % 60),
        CallOutcome::NoAnswer if incoming => "missed".into(),
        CallOutcome::NoAnswer => "no answer".into(),
        CallOutcome::Declined => "declined".into(),
        CallOutcome::Busy => "busy".into(),
        CallOutcome::Failed => "failed".into(),
    }
}

/// Text from other users, as one inert line (see [`hestia_protocol::display`]).
fn safe(s: &str) -> std::borrow::Cow<'_, str> {
    hestia_protocol::display::line(s)
}

fn print_message(m: &StoredMessage) {
    let text = hestia_protocol::display::block(&m.text);
    let peer = safe(&m.peer_name);
    if let MessageState::Call(o) = &m.state {
        return match m.direction {
            Direction::Incoming => println!("call from {peer}: {}", describe_call(o, true)),
            Direction::Outgoing => println!("call to {peer}: {}", describe_call(o, false)),
        };
    }
    match m.direction {
        Direction::Incoming if m.state == MessageState::HeldKeyChanged => {
            println!("[held: key changed] {peer}: {text}")
        }
        Direction::Incoming => println!("{peer}: {text}"),
        Direction::Outgoing => println!("me -> {peer}: {text}  ({})", describe(&m.state)),
    }
}

/// An inbox event as a line for a person, or as a JSON object.
fn show_event(d: &Device, ev: &InboxEvent, as_json: bool) {
    if as_json {
        json::print(json::event(d, ev));
    } else {
        print_event(ev);
        files::print_file_of_event(d, ev);
    }
}

fn print_event(ev: &InboxEvent) {
    match ev {
        InboxEvent::Message(m) => print_message(m),
        InboxEvent::NewContact { contact, message } => {
            println!(
                "new contact {} (unverified, key {}; compare safety numbers with \
                 `hestia contact verify {}`):",
                safe(&contact.name),
                contact.address.user.fingerprint(),
                safe(&contact.name)
            );
            print_message(message);
        }
        InboxEvent::Claimed {
            contact,
            key,
            claims,
            claimed_key,
            claimed_verified,
            first,
            message,
        } => {
            let (contact, claims) = (safe(contact), safe(claims));
            let theirs = claimed_key
                .map(|k| format!("{claims}'s key is {k}"))
                .unwrap_or_else(|| format!("{claims} is no longer a contact"));
            let verified = if *claimed_verified {
                format!(" (you verified {claims})")
            } else {
                String::new()
            };
            println!(
                "WARNING: {contact} claims to be {claims}, but {theirs}{verified} and this message \
                 is signed by another key, {key}. It is shown as {contact}, not as {claims}; \
                 nothing you send to {claims} goes to it."
            );
            print_message(message);
            if *first {
                println!(
                    "If {claims} really has a new key, compare safety numbers \
                     (`hestia contact verify {contact}`, the new key's number) and run \
                     `hestia contact accept {contact} --confirm`; otherwise \
                     `hestia contact reject {contact}`."
                );
            }
        }
        InboxEvent::Delivered(ids) => {
            for id in ids {
                println!("{id}: delivered to their device");
            }
        }
        // This command does not take calls yet: an offer that reaches it was not answered.
        InboxEvent::Call {
            contact, signal, ..
        } => {
            if let hestia_protocol::call::CallSignal::Offer { .. } = signal {
                println!("missed call from {}", safe(contact));
            }
        }
        InboxEvent::SessionRestarted { contact, lost } => println!(
            "{} message(s) from {} could not be decrypted (their session with this device broke); \
             a new session has started and {} was told, so they can send again",
            lost.len(),
            safe(contact),
            safe(contact)
        ),
        InboxEvent::PeerLostMessages { contact, lost } => {
            for id in lost {
                println!(
                    "{id}: {}'s device could not decrypt it; a new session has started: send it again",
                    safe(contact)
                );
            }
        }
        InboxEvent::Undecryptable { id, reason } => {
            println!("{id}: dropped, could not open: {}", safe(reason))
        }
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn a_push_secret_that_begins_with_a_dash_is_a_value_not_a_flag() {
        let args = [
            "hestia",
            "push",
            "register",
            "--endpoint",
            "https://push.example.org/x",
            "--p256dh",
            "-BZD1AW",
            "--auth",
            "-C8nhelv0sjxdtKdQwz7jg",
        ];
        let cli = Cli::try_parse_from(args)
            .map_err(|e| e.to_string())
            .unwrap();
        let Command::Push(push::PushArgs {
            cmd: push::PushCmd::Register { p256dh, auth, .. },
            ..
        }) = cli.command
        else {
            panic!("not a push register")
        };
        assert_eq!(
            (p256dh.as_str(), auth.as_str()),
            ("-BZD1AW", "-C8nhelv0sjxdtKdQwz7jg")
        );
    }

    fn parse(args: &[&str]) -> std::result::Result<Cli, String> {
        let all = std::iter::once("hestia").chain(args.iter().copied());
        parse_args(all.map(std::ffi::OsString::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn color_is_read_before_parsing_and_never_means_never() {
        let os = |args: &[&str]| -> Vec<std::ffi::OsString> {
            args.iter().map(std::ffi::OsString::from).collect()
        };
        assert_eq!(
            ColorWhen::from_args(&os(&["hestia", "inbox"])),
            ColorWhen::Auto
        );
        assert_eq!(
            ColorWhen::from_args(&os(&["hestia", "--color", "never", "inbox"])),
            ColorWhen::Never
        );
        assert_eq!(
            ColorWhen::from_args(&os(&["hestia", "inbox", "--color=always"])),
            ColorWhen::Always
        );
        // After `--` it is someone's text, not an option.
        assert_eq!(
            ColorWhen::from_args(&os(&["hestia", "send", "bob", "--", "--color=always"])),
            ColorWhen::Auto
        );
        assert!(ColorWhen::Always.enabled(false));
        assert!(!ColorWhen::Never.enabled(true));
        assert!(
            !ColorWhen::Auto.enabled(false),
            "auto: not when not a terminal"
        );
        let cli = parse(&["send", "bob", "hi", "--color", "never"]).unwrap();
        assert_eq!(cli.color, ColorWhen::Never);
        let e = parse(&["--color", "sometimes", "inbox"]).err().unwrap();
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn options_are_offered_only_where_they_apply() {
        use clap::CommandFactory;
        // --json before the command, or as the reading command's own option.
        for args in [
            &["--json", "inbox"][..],
            &["inbox", "--follow", "--json"],
            &["status", "--json"],
            &["contact", "list", "--json"],
            &["account", "show", "--json"],
            &["file", "list", "--json"],
            &["push", "status", "--json"],
            &["push", "--json", "status"],
            &["call", "bob", "--json"],
            &["node", "admin", "--json", "status"],
            &["node", "admin", "status", "--json"],
            &["--home", "/tmp/h", "send", "bob", "hi"],
        ] {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        // Not on commands that write, nor on a node's.
        for args in [
            &["send", "bob", "hi", "--json"][..],
            &["node", "run", "--json"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        let e = parse(&["--home", "/tmp/h", "node", "run"]).err().unwrap();
        assert!(e.contains("--home is for device commands"), "{e}");
        assert!(parse(&["--home", "/tmp/h", "bootstrap", "run"]).is_err());
        // A node's help lists neither.
        let mut cmd = Cli::command();
        let run = cmd
            .find_subcommand_mut("node")
            .and_then(|n| n.find_subcommand_mut("run"))
            .unwrap();
        let help = run.render_long_help().to_string();
        assert!(
            !help.contains("--home") && !help.contains("--json"),
            "{help}"
        );
    }
}
