//! `hestia chat`: the terminal client. Three parts, so the screen never waits on the network:
//! a thread reading the terminal's keys, the screen loop (`App` state, `ui` drawing), and one
//! device worker task that owns the `Device` and its connection, performs the screen's
//! [`Action`]s and reads the inbox, and sends the screen [`Update`]s. Works over SSH (plain
//! crossterm, no mouse), redraws on resize, restores the terminal on exit and on panic.

pub mod app;
pub mod ui;

use anyhow::Result;
use app::{Action, App, Update};
use hestia_node::client::{ClientLibError, Connection, Device, InboxEvent};
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
    let d = Device::open(home)?;
    // Fail before the screen takes over, with the usual one-line error.
    let conn = d.connect().await?;
    let (upd_tx, mut updates) = mpsc::channel(256);
    let (act_tx, actions) = mpsc::channel(64);
    // The worker runs beside the screen in this task (a device is not `Send`); closing the
    // actions channel ends it at its next turn, between operations, never inside one.
    let worker = worker(d, conn, actions, upd_tx);
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
                        if a == Action::Quit {
                            return Ok(());
                        }
                        let _ = act_tx.send(a).await;
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

async fn worker(
    mut d: Device,
    mut conn: Connection,
    mut actions: mpsc::Receiver<Action>,
    updates: mpsc::Sender<Update>,
) {
    let say = |u: Update| {
        let _ = updates.try_send(u);
    };
    let refresh = |d: &Device| {
        if let Ok(c) = d.contacts() {
            say(Update::Contacts(c));
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
                        let qr = crate::qr(&n.code()).unwrap_or_default();
                        say(Update::SafetyNumber {
                            of,
                            text: format!("{n}\n\n{qr}\nas text: {}", n.code()),
                        });
                    }
                    Err(e) => say(Update::Status(e.to_string())),
                },
                Ok(Action::Quit) | Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
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
                            signal: hestia_protocol::call::CallSignal::Offer { .. },
                            ..
                        } => say(Update::Status(format!(
                            "{contact} called (missed here: calls are taken by `hestia call --listen` \
                                 or `hestia inbox --follow`)"
                        ))),
                        _ => {}
                    }
                }
                changed |= !events.is_empty();
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
