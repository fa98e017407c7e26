//! `hestia send --file`'s progress, `hestia file get|list`, and the file lines of `inbox`.

use crate::{describe, inspect, safe};
use anyhow::Result;
use hestia_node::client::{Device, InboxEvent};
use hestia_store::client::{Direction, StoredMessage};
use std::path::{Path, PathBuf};

/// `hestia file get ID [--out PATH]`.
pub async fn get(home: &Path, id: &str, out: Option<PathBuf>) -> Result<()> {
    let mut d = crate::unlock::open_device(home)?;
    let (envelope, f) = d.find_file(id)?;
    let mut conn = d.connect().await?;
    let bar = progress_bar("downloading");
    let mut tick = resuming_tick(&bar, "here");
    let place = d
        .fetch_file(&mut conn, &envelope, out.as_deref(), &mut tick)
        .await;
    bar.finish_and_clear();
    let place = place?;
    println!(
        "{}: {} ({}), verified, at {}",
        &envelope.to_hex()[..12],
        safe(&f.file.name),
        mib(f.file.size),
        safe(&place.to_string_lossy())
    );
    Ok(())
}

/// `hestia file list`.
pub async fn list(home: &Path, as_json: bool) -> Result<()> {
    let mut d = crate::unlock::open_device(home)?;
    // What the home node says of files sent (fetched, expired) and of uploads (how far);
    // offline, what this device knows.
    let mut conn = d.connect().await.ok();
    if let Some(c) = conn.as_mut() {
        d.refresh_files(c).await?;
    }
    for u in d.uploads()? {
        if as_json {
            let held = match conn.as_mut() {
                Some(c) => d.upload_progress(c, &u).await?,
                None => None,
            };
            crate::json::print(serde_json::json!({
                "id": u.envelope.to_hex(),
                "contact": u.contact,
                "direction": "out",
                "name": u.file.name,
                "size": u.file.size,
                "state": "uploading",
                "chunks_held": held.map(|h| h.0),
                "chunks": held.map(|h| h.1),
            }));
            continue;
        }
        let progress = match conn.as_mut() {
            Some(c) => match d.upload_progress(c, &u).await? {
                Some((held, chunks)) => {
                    format!(
                        "{}% uploaded",
                        u64::from(held) * 100 / u64::from(chunks.max(1))
                    )
                }
                None => "forgotten by your node (idle too long); sending again starts over".into(),
            },
            None => "your node did not answer".into(),
        };
        println!(
            "uploading to {}: {} ({}): interrupted, {progress}; run the same `hestia send {} --file` again to continue",
            safe(&u.contact),
            safe(&u.file.name),
            mib(u.file.size),
            safe(&u.contact),
        );
    }
    let history = d.history()?;
    for (envelope, f) in d.files()? {
        let who = history
            .iter()
            .find(|m| m.envelope_id == envelope)
            .map(|m| m.peer_name.clone())
            .unwrap_or_default();
        if as_json {
            crate::json::print(crate::json::file(&envelope.to_hex(), &f, &who));
            continue;
        }
        let dir = if f.direction == Direction::Incoming {
            "from"
        } else {
            "to"
        };
        println!(
            "{} {dir} {}: {} ({}, {}), expires {}: {}",
            &envelope.to_hex()[..12],
            safe(&who),
            safe(&f.file.name),
            mib(f.file.size),
            safe(&f.file.mime),
            inspect::utc(f.file.expires_at),
            describe_file(&f)
        );
    }
    Ok(())
}

/// Continues uploads an earlier command left (it was interrupted, or its node went away), as
/// any command that talks to the home node does. A failure is said and does not stop the
/// command.
pub async fn resume_uploads(d: &mut Device, conn: &mut hestia_node::client::Connection) {
    if d.uploads().map_or(true, |u| u.is_empty()) {
        return;
    }
    let bar = progress_bar("continuing an upload");
    let mut tick = resuming_tick(&bar, "on your node");
    let result = d.resume_uploads(conn, &mut tick).await;
    bar.finish_and_clear();
    match result {
        Ok(sent) => {
            for m in sent {
                eprintln!(
                    "continued an interrupted upload to {}: {}",
                    safe(&m.peer_name),
                    describe(&m.state)
                );
            }
        }
        Err(e) => eprintln!("an interrupted upload could not continue yet: {e}"),
    }
}

/// A bar on stderr for a transfer: bytes, rate, time left. Hidden when stderr is not a
/// terminal.
pub fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .expect("a fixed template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// Moves `bar` as a transfer goes, and says once, at its start, how much of it an earlier
/// attempt had already done (`where_`: where those bytes are).
pub fn resuming_tick<'a>(
    bar: &'a indicatif::ProgressBar,
    where_: &'a str,
) -> impl FnMut(u64, u64) + 'a {
    let mut first = true;
    move |done, total| {
        if std::mem::take(&mut first) && done > 0 {
            bar.suspend(|| eprintln!("resuming: {} of {} already {where_}", mib(done), mib(total)));
        }
        progress_to(bar, done, total)
    }
}

pub fn progress_to(bar: &indicatif::ProgressBar, done: u64, total: u64) {
    bar.set_length(total);
    bar.set_position(done);
}

pub fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

fn describe_file(f: &hestia_store::client::StoredFile) -> String {
    use hestia_store::client::FileState;
    match &f.state {
        FileState::Sent => "uploaded, sent".into(),
        FileState::Fetched => "fetched by their device".into(),
        FileState::Received => "not downloaded".into(),
        FileState::Downloading { done, .. } => format!(
            "downloading ({done} of {} chunks; `hestia file get` continues)",
            f.file.cipher.chunks
        ),
        FileState::Downloaded { path } => format!("downloaded to {}", safe(path)),
        FileState::Expired => "file expired".into(),
    }
}

/// The file line of a message, if it carries one.
pub fn print_file_of(d: &Device, m: &StoredMessage) {
    if let Ok(Some(f)) = d.file(&m.envelope_id) {
        let r = &f.file;
        println!(
            "  file {} {} ({}, {}) id {} expires {}: {}",
            if m.direction == Direction::Incoming {
                "from"
            } else {
                "to"
            },
            safe(&m.peer_name),
            mib(r.size),
            safe(&r.mime),
            &m.envelope_id.to_hex()[..12],
            inspect::utc(r.expires_at),
            safe(&r.name),
        );
        if m.direction == Direction::Incoming
            && f.state == hestia_store::client::FileState::Received
        {
            println!(
                "  get it with: hestia file get {}",
                &m.envelope_id.to_hex()[..12]
            );
        }
    }
}

pub fn print_file_of_event(d: &Device, ev: &InboxEvent) {
    match ev {
        InboxEvent::Message(m)
        | InboxEvent::NewContact { message: m, .. }
        | InboxEvent::Claimed { message: m, .. } => print_file_of(d, m),
        _ => {}
    }
}
