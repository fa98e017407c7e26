//! `hestia push`: register this device's Web Push subscription with the home node, see what
//! the node says of it, remove it.

use crate::inspect;
use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Subcommand;
use hestia_protocol::display;
use hestia_protocol::push::{AUTH_LEN, P256DH_LEN, Subscription};
use hestia_protocol::wire::{PushInfo, PushState, WakeFailure};
use std::path::Path;

#[derive(Subcommand)]
pub enum PushCmd {
    /// Have your home node wake this device through Web Push (UnifiedPush, a browser) when mail
    /// waits and none of your devices is connected. The wake-up carries no content. Give the
    /// subscription your push distributor made with the node's key (`hestia push status`
    /// shows it).
    Register {
        /// The subscription's endpoint URL (http or https).
        #[arg(long)]
        endpoint: String,
        /// The subscription's `p256dh` key, base64url (it may begin with `-`).
        #[arg(long, allow_hyphen_values = true)]
        p256dh: String,
        /// The subscription's `auth` secret, base64url (it may begin with `-`).
        #[arg(long, allow_hyphen_values = true)]
        auth: String,
    },
    /// Show the node's push key and your subscriptions: wake-ups sent, failures, and any the
    /// push service has removed.
    Status,
    /// Stop push wake-ups to this endpoint, or to all of yours.
    Unregister {
        /// The endpoint to remove (default: every subscription).
        #[arg(long)]
        endpoint: Option<String>,
    },
}

/// `hestia push`: the commands, and `--json` for all of them (each prints what it leaves).
#[derive(clap::Args)]
pub struct PushArgs {
    #[command(subcommand)]
    pub cmd: PushCmd,
    /// Print as JSON, one object per line, with Unix-millisecond times.
    #[arg(long, global = true)]
    pub json: bool,
}

pub async fn run(args: PushArgs, home: &Path, as_json: bool) -> Result<()> {
    let (cmd, as_json) = (args.cmd, as_json || args.json);
    let d = crate::unlock::open_device(home)?;
    let show = |info: &PushInfo| {
        if as_json {
            crate::json::print(crate::json::push(info));
        } else {
            show(info);
        }
    };
    match cmd {
        PushCmd::Register {
            endpoint,
            p256dh,
            auth,
        } => {
            let p256dh = decode(&p256dh).context("--p256dh is not base64url")?;
            if p256dh.len() != P256DH_LEN {
                bail!(
                    "--p256dh must be a {P256DH_LEN}-byte P-256 key, not {} bytes",
                    p256dh.len()
                );
            }
            let auth: [u8; AUTH_LEN] = decode(&auth)
                .context("--auth is not base64url")?
                .try_into()
                .map_err(|v: Vec<u8>| {
                    anyhow::anyhow!(
                        "--auth must be a {AUTH_LEN}-byte secret, not {} bytes",
                        v.len()
                    )
                })?;
            let info = d
                .push_register(Subscription {
                    endpoint,
                    p256dh,
                    auth,
                })
                .await?;
            if !as_json {
                println!("registered: your node will wake this device when mail waits");
            }
            show(&info);
        }
        PushCmd::Status => show(&d.push_status().await?),
        PushCmd::Unregister { endpoint } => {
            let all = endpoint.is_none();
            let before = d.push_status().await?.subscriptions.len();
            let info = d.push_unregister(endpoint).await?;
            let removed = before.saturating_sub(info.subscriptions.len());
            match (removed, all) {
                (0, false) => bail!("no subscription with that endpoint"),
                (n, _) if !as_json => println!("removed {n} subscription(s)"),
                _ => {}
            }
            show(&info);
        }
    }
    Ok(())
}

/// Base64url or standard base64, with or without padding: distributors hand out either.
fn decode(s: &str) -> Result<Vec<u8>> {
    let normal: String = s
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(normal)?)
}

fn show(info: &PushInfo) {
    if info.vapid_key.is_empty() {
        println!("this node sends no push wake-ups");
    } else {
        println!(
            "node push key (applicationServerKey): {}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&info.vapid_key)
        );
    }
    if info.subscriptions.is_empty() {
        println!("no push subscriptions");
    }
    for s in &info.subscriptions {
        let endpoint = display::line(&s.endpoint);
        let state = match &s.state {
            PushState::Removed { at, status } => format!(
                "removed by the push service (HTTP {status}) at {}; nothing is sent to it",
                inspect::utc(*at)
            ),
            PushState::Active {
                woken,
                wakes_sent,
                last_wake_at,
                failed_attempts,
                last_failure,
            } => {
                let mut line =
                    format!("active, {wakes_sent} wake-up(s) sent since the node started");
                if let Some(at) = last_wake_at {
                    line += &format!(", last at {}", inspect::utc(*at));
                }
                if *woken {
                    line += "; woken, quiet until a device connects and reads its mail";
                }
                if let Some(f) = last_failure {
                    line += &format!(
                        "; {failed_attempts} failed attempt(s), last: {}",
                        failure(f)
                    );
                }
                line
            }
        };
        println!(
            "- {endpoint} (registered {}): {state}",
            inspect::utc(s.registered_at)
        );
    }
}

fn failure(f: &WakeFailure) -> String {
    match f {
        WakeFailure::Status(s) => format!("HTTP {s}"),
        WakeFailure::Unreachable => "push service unreachable".into(),
        WakeFailure::Timeout => "push service did not answer in time".into(),
        WakeFailure::Refused(r) => r.to_string(),
    }
}
