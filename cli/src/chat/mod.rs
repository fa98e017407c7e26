//! `hestia chat`: the terminal client. Three parts, so the screen never waits on the network:
//! a thread reading the terminal's keys, the screen loop (`App` state, `ui` drawing), and one
//! device worker task that owns the `Device` and its connection, performs the screen's
//! [`Action`]s and reads the inbox, and sends the screen [`Update`]s. A call (rung with Ctrl-R,
//! or ringing in) runs inside the worker; its keys reach it on a channel of their own. Works over SSH (plain
//! crossterm, no mouse), redraws on resize, restores the terminal on exit and on panic.

pub mod app;
pub mod ui;

use anyhow::Result;
use app::{Action, App, CallBar, CallKey, Update};
use hestia_node::client::call::audio::Meter;
use hestia_node::client::call::udp::Command;
use hestia_node::client::calls::{CallProgress, CallSetup, Media};
use hestia_node::client::{ClientLibError, Connection, Device, InboxEvent};
use hestia_protocol::call::CallSignal;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long one read of the inbox waits: the most a typed message waits to go out.
const POLL_MS: u32 = 250;
/// How often the delivery states of sent messages are asked of the node.
const STATUS_EVERY: Duration = Duration::from_secs(3);

enum Input {
    Key(event::KeyEvent),
    Redraw,
}

pub async fn run(home: &Path) -> Result<()> {
    let d = crate::unlock::open_device(home)?;
    // Fail before the screen takes over, with the usual one-line error.
    let conn = d.connect().await?;
    let (upd_tx, mut updates) = mpsc::channel(256);
    let (act_tx, actions) = mpsc::channel(64);
    // Call keys go straight to the running call: the worker is inside it, not at its queue.
    let (call_tx, call_rx) = mpsc::channel(8);
    // The worker runs beside the screen in this task (a device is not `Send`); closing the
    // actions channel ends it at its next turn, between operations, never inside one.
    let worker = worker(d, conn, actions, call_rx, upd_tx);
    let (key_tx, mut keys) = mpsc::channel(256);
    std::thread::spawn(move || {
        loop {
            let input = match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => Input::Key(k),
                Ok(Event::Resize(..)) => Input::Redraw,
                Ok(_) => continue,
                Err(_) => break,
            };
            if key_tx.blocking_send(input).is_err() {
                break;
            }
        }
    });
    let mut terminal = ratatui::init();
    let mut app = App::default();
    app.status = "connecting…".into();
    let screen = async move {
        let act_tx = act_tx;
        loop {
            terminal.draw(|f| ui::draw(f, &app))?;
            tokio::select! {
                Some(input) = keys.recv() => {
                    if let Input::Key(k) = input
                        && let Some(a) = app.key(k)
                    {
                        match a {
                            Action::Quit => return Ok(()),
                            Action::Call(k) => {
                                let _ = call_tx.try_send(match k {
                                    CallKey::Answer => Command::Answer,
                                    CallKey::Decline => Command::Decline,
                                    CallKey::Hangup => Command::Hangup,
                                });
                            }
                            // Never wait here: the screen keeps drawing while the worker is
                            // busy (in a call, say); a full queue drops the key.
                            a => {
                                if act_tx.try_send(a).is_err() {
                                    app.status = "busy: try again in a moment".into();
                                }
                            }
                        }
                    }
                }
                Some(u) = updates.recv() => app.apply(u),
                else => return Ok::<(), anyhow::Error>(()),
            }
        }
    };
    let screen = async {
        let r = screen.await;
        // Give the terminal back at once; the worker finishes its operation meanwhile.
        ratatui::restore();
        r
    };
    let (result, ()) = futures::join!(screen, worker);
    result
}

/// A transfer's progress on the status line, once per percent.
fn percent<'a>(
    what: &'a str,
    name: &'a str,
    updates: &'a mpsc::Sender<Update>,
) -> impl FnMut(u64, u64) + 'a {
    let mut last = None;
    move |done, total| {
        let p = done * 100 / total.max(1);
        if last != Some(p) {
            last = Some(p);
            let _ = updates.try_send(Update::Status(format!("{what} {name}: {p}%")));
        }
    }
}

/// A call from the terminal client: the default microphone and speaker in a build with the
/// `mic` feature that finds them; silence and a meter otherwise.
fn call_setup() -> CallSetup {
    let (source, speaker, _) = crate::call::default_sound();
    CallSetup {
        source,
        sink: speaker.unwrap_or_else(|| Box::new(Meter::default())),
        media: Media::default(),
    }
}

/// Shows a running call's progress on the screen.
fn show_call(
    updates: &mpsc::Sender<Update>,
    peer: &str,
    incoming: bool,
) -> impl FnMut(CallProgress) + Send {
    let updates = updates.clone();
    let mut bar = CallBar {
        peer: peer.to_string(),
        incoming,
        connected: false,
    };
    move |p| {
        let u = match p {
            CallProgress::Ringing { to } => {
                bar.peer = to;
                Update::Call(Some(bar.clone()))
            }
            CallProgress::Incoming { from } => {
                bar.peer = from;
                bar.incoming = true;
                Update::Call(Some(bar.clone()))
            }
            CallProgress::Connected { .. } => {
                bar.connected = true;
                Update::Call(Some(bar.clone()))
            }
            CallProgress::Text(t) => Update::Status(format!("{} (in the call): {t}", bar.peer)),
            CallProgress::Busy { from } => {
                Update::Status(format!("{from} called too and was told you are busy"))
            }
            CallProgress::Ended { reason, talked } => {
                let _ = updates.try_send(Update::Call(None));
                Update::Status(crate::call::ended_text(&bar.peer, reason, talked))
            }
            CallProgress::Inbox(_) => return,
        };
        let _ = updates.try_send(u);
    }
}

async fn worker(
    mut d: Device,
    mut conn: Connection,
    mut actions: mpsc::Receiver<Action>,
    mut calls: mpsc::Receiver<Command>,
    updates: mpsc::Sender<Update>,
) {
    let say = |u: Update| {
        let _ = updates.try_send(u);
    };
    let refresh = |d: &Device| {
        if let Ok(c) = d.contacts() {
            say(Update::Contacts(c));
        }
        if let Ok(fs) = d.files() {
            say(Update::Files(fs));
        }
        if let Ok(h) = d.history() {
            say(Update::History(h));
        }
    };
    refresh(&d);
    say(Update::Status(format!("connected to {}", d.home_addr())));
    let mut status_at = Instant::now();
    loop {
        let mut changed = false;
        loop {
            match actions.try_recv() {
                Ok(Action::Send { to, text }) => match d.send(&mut conn, &to, &text).await {
                    Ok(_) => changed = true,
                    Err(e) => say(Update::Status(format!("not sent: {e}"))),
                },
                Ok(Action::SafetyNumber { of }) => match d.safety_number(&of) {
                    Ok(n) => {
                        let qr = crate::contact::qr(&n.code()).unwrap_or_default();
                        say(Update::SafetyNumber {
                            of,
                            text: format!("{n}\n\n{qr}\nas text: {}", n.code()),
                        });
                    }
                    Err(e) => say(Update::Status(e.to_string())),
                },
                Ok(Action::SendFile { to, path }) => {
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                    let name = name.unwrap_or_default();
                    let mut tick = percent("uploading", &name, &updates);
                    match d.send_file(&mut conn, &to, &path, "", &mut tick).await {
                        Ok(_) => say(Update::Status(format!("sent {name}"))),
                        Err(e) => say(Update::Status(format!("not sent: {e}"))),
                    }
                    changed = true;
                }
                Ok(Action::GetFile { id }) => {
                    let mut tick = percent("downloading", "the file", &updates);
                    match d.fetch_file(&mut conn, &id, None, &mut tick).await {
                        Ok(place) => {
                            say(Update::Status(format!("verified, at {}", place.display())))
                        }
                        Err(e) => say(Update::Status(format!("not fetched: {e}"))),
                    }
                    changed = true;
                }
                Ok(Action::Ring { to }) => {
                    while calls.try_recv().is_ok() {}
                    let mut on = show_call(&updates, &to, false);
                    if let Err(e) = d
                        .call(&mut conn, &to, call_setup(), &mut calls, &mut on)
                        .await
                    {
                        say(Update::Call(None));
                        say(Update::Status(format!("call failed: {e}")));
                    }
                    changed = true;
                }
                Ok(Action::Confirm { of }) => {
                    let claims = d.contact(&of).ok().and_then(|c| c.claims);
                    let done = match &claims {
                        Some(old) => d
                            .accept_new_key(&of)
                            .map(|_| format!("{of}'s key is now {old}'s, verified")),
                        None => d.verify_contact(&of).map(|_| format!("{of} verified")),
                    };
                    say(Update::Status(match done {
                        Ok(s) => s,
                        Err(e) => e.to_string(),
                    }));
                    changed = true;
                }
                Ok(Action::AcceptRequest { name }) => {
                    say(Update::Status(match d.accept_request(&name) {
                        Ok(_) => format!("{name} is a contact now (unverified)"),
                        Err(e) => e.to_string(),
                    }));
                    changed = true;
                }
                Ok(Action::Reject { name }) => {
                    say(Update::Status(match d.reject_contact(&name) {
                        Ok(_) => format!("{name}'s key rejected: what it sends is dropped unread"),
                        Err(e) => e.to_string(),
                    }));
                    changed = true;
                }
                Ok(Action::Call(_)) => {}
                Ok(Action::Quit) | Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        let mut offers = Vec::new();
        match d.sync(&mut conn, POLL_MS).await {
            Ok(events) => {
                for ev in &events {
                    match ev {
                        InboxEvent::Claimed {
                            claims, contact, ..
                        } => say(Update::KeyWarning {
                            contact: contact.clone(),
                            text: format!(
                                "this key claims to be {claims}: compare safety numbers (Ctrl-V) first"
                            ),
                        }),
                        InboxEvent::Call {
                            contact,
                            signal: CallSignal::Offer { call, sdp },
                            sent_at,
                        } => offers.push((contact.clone(), *call, sdp.clone(), *sent_at)),
                        _ => {}
                    }
                }
                changed |= !events.is_empty();
                // Rings here until answered, declined or given up (`answer_offer` passes over
                // an offer too old to answer: it is a missed call in the history).
                for (from, id, sdp, sent_at) in offers.drain(..) {
                    while calls.try_recv().is_ok() {}
                    let mut on = show_call(&updates, &from, true);
                    let answered = d
                        .answer_offer(
                            &mut conn,
                            &from,
                            id,
                            &sdp,
                            sent_at,
                            call_setup(),
                            &mut calls,
                            &mut on,
                        )
                        .await;
                    say(Update::Call(None));
                    if let Err(e) = answered {
                        say(Update::Status(format!("call failed: {e}")));
                    }
                }
            }
            Err(e @ (ClientLibError::RequestFailed(_) | ClientLibError::Unreachable { .. })) => {
                say(Update::Status(format!(
                    "connection lost ({e}); reconnecting"
                )));
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Ok(c) = d.connect().await {
                    conn = c;
                    say(Update::Status("reconnected".into()));
                }
                continue;
            }
            Err(e) => say(Update::Status(e.to_string())),
        }
        if status_at.elapsed() >= STATUS_EVERY {
            status_at = Instant::now();
            if let Ok(moved) = d.refresh_status(&mut conn).await {
                changed |= !moved.is_empty();
            }
        }
        if changed {
            refresh(&d);
        }
    }
}
