//! Drawing the terminal client: contacts on the left (trust mark, unread count), the
//! conversation on the right (time, delivery marks, calls, key warnings), the compose line and
//! a status line below; help and safety-number overlays. Every text from other users goes
//! through `protocol::display`, so no message can move the cursor or restyle the screen.

use super::app::{App, delivery_mark, trust_mark};
use hestia_protocol::display;
use hestia_store::client::{Direction, MessageState, StoredMessage};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the screen uses colours (`hestia --color`); warnings stay bold without them.
static COLOUR: AtomicBool = AtomicBool::new(true);

/// Turns the client's colours on or off for this process.
pub fn set_colour(on: bool) {
    COLOUR.store(on, Ordering::Relaxed);
}

/// A style in colour `c`, or the plain style when colours are off.
fn tint(c: Color) -> Style {
    if COLOUR.load(Ordering::Relaxed) {
        Style::default().fg(c)
    } else {
        Style::default()
    }
}

const HELP: &str = "\
Enter        send what you typed to the selected contact
Tab, Ctrl-N  next contact          Shift-Tab, Ctrl-P  previous
PgUp, PgDn   scroll the conversation   Ctrl-Home  its beginning   Ctrl-End  the newest
Ctrl-V       the contact's safety number and QR code (compare it in person); y there
             says it matched: the contact is verified (a key claiming a name: accepted)
Ctrl-Y       accept a message request     Ctrl-X twice  reject the contact's key
/file PATH   send a file (encrypted here, uploaded to your node, then announced)
Ctrl-G       fetch the newest file they sent (decrypted, verified, put where chat started)
Ctrl-R       ring the contact       Ctrl-A answer   Ctrl-D decline   Ctrl-E hang up
             (microphone and speaker with the mic feature; silence without)
Esc          clear the line; quit when it is empty     Ctrl-C  quit
?            this help (any key closes it)

Marks: ✓ verified  · unverified (trusted on first use)  ? message request
       ! a new key claims this name: compare its safety number before accepting it
Sent:  … waiting   ✓ on their node   ✓✓ on their device";

fn hhmm(at: u64) -> String {
    let secs = at / 1000;
    format!("{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60)
}

pub fn draw(f: &mut Frame, app: &App) {
    let [main, compose, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let [left, right] =
        Layout::horizontal([Constraint::Length(26), Constraint::Min(20)]).areas(main);
    draw_contacts(f, app, left);
    draw_conversation(f, app, right);
    let to = app
        .selected_name()
        .map(|n| format!(" to {} ", display::line(n)))
        .unwrap_or_else(|| " no contacts yet: hestia contact add ".into());
    f.render_widget(
        Paragraph::new(app.compose.as_str())
            .block(Block::default().borders(Borders::ALL).title(to)),
        compose,
    );
    match &app.call {
        Some(c) => f.render_widget(
            Paragraph::new(format!(" ☎ {}", call_line(c)))
                .style(tint(Color::Yellow).add_modifier(Modifier::BOLD)),
            status,
        ),
        None => f.render_widget(
            Paragraph::new(format!(" {}   ? help", display::line(&app.status)))
                .style(tint(Color::DarkGray)),
            status,
        ),
    }
    if app.help {
        overlay(f, " help ", HELP);
    }
    if let Some((of, text)) = &app.safety {
        overlay(f, &format!(" safety number: {} ", display::line(of)), text);
    }
}

/// A file's message: name, size, where it stands, and its caption (all neutralised).
fn file_text(f: &hestia_store::client::StoredFile) -> String {
    use hestia_store::client::FileState;
    let incoming = f.direction == Direction::Incoming;
    let state = match &f.state {
        FileState::Received => "Ctrl-G to fetch".to_string(),
        FileState::Downloading { done, .. } => format!(
            "{}% here, Ctrl-G to go on",
            u64::from(*done) * 100 / u64::from(f.file.cipher.chunks.max(1))
        ),
        FileState::Downloaded { path } => format!("at {}", display::line(path)),
        FileState::Expired => "file expired".into(),
        FileState::Sent if incoming => String::new(),
        FileState::Sent => "on your node".into(),
        FileState::Fetched => "fetched by them".into(),
    };
    let mut t = format!(
        "📎 {} ({}) {state}",
        display::line(&f.file.name),
        crate::files::mib(f.file.size)
    );
    if !f.file.caption.is_empty() {
        t.push('\n');
        t.push_str(&display::block(&f.file.caption));
    }
    t
}

/// What the call bar says, and which keys apply.
pub fn call_line(c: &super::app::CallBar) -> String {
    let peer = display::line(&c.peer);
    match (c.incoming, c.connected) {
        (_, true) => format!("in a call with {peer} (you send silence)   Ctrl-E hang up"),
        (true, false) => format!("{peer} is calling   Ctrl-A answer   Ctrl-D decline"),
        (false, false) => format!("ringing {peer}…   Ctrl-E hang up"),
    }
}

fn overlay(f: &mut Frame, title: &str, text: &str) {
    let a = f.area();
    let w = a.width.saturating_sub(4).min(90);
    let h = (text.lines().count() as u16 + 2).min(a.height.saturating_sub(2));
    let r = Rect::new(
        a.x + (a.width - w) / 2,
        a.y + (a.height.saturating_sub(h)) / 2,
        w,
        h,
    );
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text).block(
            Block::default()
                .borders(Borders::ALL)
                .title(title.to_string()),
        ),
        r,
    );
}

fn draw_contacts(f: &mut Frame, app: &App, area: Rect) {
    let items: Vec<ListItem> = app
        .contacts
        .iter()
        .map(|c| {
            let unread = app.unread.get(&c.name).copied().unwrap_or(0);
            let mut spans = vec![
                Span::raw(format!("{} ", trust_mark(c))),
                Span::raw(display::line(&c.name).into_owned()),
            ];
            if unread > 0 {
                spans.push(Span::styled(
                    format!(" ({unread})"),
                    Style::default().add_modifier(Modifier::BOLD),
                ));
            }
            let style = if c.claims.is_some() {
                tint(Color::Red)
            } else {
                Style::default()
            };
            ListItem::new(Line::from(spans)).style(style)
        })
        .collect();
    let mut state = ListState::default();
    state.select((!app.contacts.is_empty()).then_some(app.selected));
    f.render_stateful_widget(
        List::new(items)
            .block(Block::default().borders(Borders::ALL).title(" contacts "))
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        area,
        &mut state,
    );
}

/// Key warnings pinned above the conversation (the newest, if there are more).
const MAX_PINNED_WARNINGS: usize = 3;

/// The lines one message takes on screen.
fn message_lines(app: &App, m: &StoredMessage) -> Vec<Line<'static>> {
    let time = Span::styled(hhmm(m.at), tint(Color::DarkGray));
    if let MessageState::Call(o) = &m.state {
        let incoming = m.direction == Direction::Incoming;
        let what = crate::describe_call(o, incoming);
        let text = if incoming {
            format!(" call from them: {what}")
        } else {
            format!(" call to them: {what}")
        };
        return vec![Line::from(vec![
            time,
            Span::styled(text, tint(Color::Cyan)),
        ])];
    }
    let body = match app.files.get(&m.envelope_id) {
        Some(f) => file_text(f),
        None => display::block(&m.text).into_owned(),
    };
    let (who, mark) = match m.direction {
        Direction::Incoming => (display::line(&m.peer_name).into_owned(), String::new()),
        Direction::Outgoing => ("me".into(), format!("  {}", delivery_mark(&m.state))),
    };
    let mut lines = Vec::new();
    let mut first = true;
    for part in body.lines() {
        let mut spans = Vec::new();
        if first {
            spans.push(time.clone());
            spans.push(Span::styled(
                format!(" {who}: "),
                Style::default().add_modifier(Modifier::BOLD),
            ));
        } else {
            spans.push(Span::raw("       "));
        }
        spans.push(Span::raw(part.to_string()));
        first = false;
        lines.push(Line::from(spans));
    }
    if lines.is_empty() {
        lines.push(Line::from(vec![
            time,
            Span::styled(
                format!(" {who}: "),
                Style::default().add_modifier(Modifier::BOLD),
            ),
        ]));
    }
    if !mark.is_empty()
        && let Some(last) = lines.last_mut()
    {
        last.spans.push(Span::styled(mark, tint(Color::DarkGray)));
    }
    lines
}

fn draw_conversation(f: &mut Frame, app: &App, area: Rect) {
    let Some(c) = app.selected_contact() else {
        f.render_widget(Block::default().borders(Borders::ALL), area);
        return;
    };
    // Warnings stay in view however far back the conversation is scrolled.
    let loud = tint(Color::Red).add_modifier(Modifier::BOLD);
    let mut pinned: Vec<Line> = Vec::new();
    if let Some(claimed) = &c.claims {
        pinned.push(Line::styled(
            format!(
                "!! this key wrote as {:?}, whose key is another: it may be them on a new device, \
                 or someone else. Compare safety numbers (Ctrl-V, then y if they match) or \
                 reject it (Ctrl-X).",
                display::line(claimed)
            ),
            loud,
        ));
    } else if c.origin == hestia_store::client::Origin::Request {
        pinned.push(Line::styled(
            "? a message request from a key you do not know: reply or Ctrl-Y to accept it, \
             Ctrl-X to reject it",
            tint(Color::Yellow),
        ));
    }
    let warnings = app.warnings.get(&c.name).map_or(&[][..], |w| &w[..]);
    for w in &warnings[warnings.len().saturating_sub(MAX_PINNED_WARNINGS)..] {
        pinned.push(Line::styled(format!("!! {}", display::line(w)), loud));
    }
    let height = area.height.saturating_sub(2) as usize;
    let room = height.saturating_sub(pinned.len());
    // Only the messages on screen are laid out, newest first: a long history costs nothing
    // until it is scrolled to.
    let want = room.saturating_add(app.scroll);
    let mut window: Vec<Line> = Vec::new();
    let messages = app.messages.get(&c.name).map_or(&[][..], |m| &m[..]);
    for m in messages.iter().rev() {
        if window.len() >= want {
            break;
        }
        let mut ls = message_lines(app, m);
        ls.reverse();
        window.extend(ls);
    }
    window.reverse();
    let scroll = app.scroll.min(window.len().saturating_sub(room));
    let end = window.len() - scroll;
    let start = end.saturating_sub(room);
    let mut shown = pinned;
    shown.extend_from_slice(&window[start..end]);
    let title = format!(
        " {} {}{} ",
        display::line(&c.name),
        if c.trust == hestia_store::client::Trust::Verified {
            "(verified)"
        } else {
            "(unverified)"
        },
        if scroll > 0 {
            format!(", {scroll} lines back (Ctrl-End: newest)")
        } else {
            String::new()
        }
    );
    f.render_widget(
        Paragraph::new(shown)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::app::{App, Update};
    use hestia_store::client::Direction;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn screen(app: &App) -> String {
        let mut t = Terminal::new(TestBackend::new(100, 20)).unwrap();
        t.draw(|f| super::draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn a_conversation_shows_times_marks_and_neutralised_text() {
        use super::super::app::tests::{contact, message};
        let mut a = App::default();
        let mut mallory = contact("mallory", 3);
        mallory.claims = Some("bob".into());
        a.apply(Update::Contacts(vec![contact("bob", 2), mallory]));
        a.apply(Update::History(vec![
            message("bob", 1, "hi there", Direction::Incoming),
            message("bob", 2, "hello bob", Direction::Outgoing),
            message("bob", 3, "evil \u{1b}[2Jclear", Direction::Incoming),
        ]));
        // The key claiming a name is listed first, in red, and selected.
        assert_eq!(a.selected_name(), Some("mallory"));
        let s = screen(&a);
        assert!(s.contains("! mallory"), "{s}");
        assert!(s.contains("this key wrote as"), "{s}");
        a.apply(Update::Status("connected".into()));
        a.selected = 1;
        let s = screen(&a);
        assert!(s.contains("bob: hi there"), "{s}");
        assert!(s.contains("me: hello bob  ✓"), "{s}");
        assert!(!s.contains('\u{1b}'), "no raw escape reaches the screen");
        assert!(s.contains("connected"), "{s}");
    }

    #[test]
    fn a_call_takes_the_status_line_with_the_keys_that_apply() {
        use super::super::app::CallBar;
        let mut a = App::default();
        a.apply(Update::Status("connected".into()));
        a.apply(Update::Call(Some(CallBar {
            peer: "bob\u{1b}[31m".into(),
            incoming: true,
            connected: false,
        })));
        let s = screen(&a);
        assert!(
            s.contains("is calling   Ctrl-A answer   Ctrl-D decline"),
            "{s}"
        );
        assert!(!s.contains('\u{1b}'), "{s}");
        a.apply(Update::Call(Some(CallBar {
            peer: "bob".into(),
            incoming: true,
            connected: true,
        })));
        assert!(screen(&a).contains("in a call with bob"));
        a.apply(Update::Call(None));
        assert!(screen(&a).contains("connected"), "the status line is back");
    }

    pub(crate) fn file_ref(name: &str, size: u64) -> hestia_protocol::file::FileRef {
        use hestia_protocol::file::{BlobId, Capability, FileCipher, FileRef};
        FileRef {
            name: name.into(),
            mime: "application/pdf".into(),
            caption: "minutes \u{1b}[2J".into(),
            size,
            digest: [0; 32],
            cipher: FileCipher::generate(&mut rand::rng(), size).unwrap(),
            node: "12D3KooWnode".into(),
            blob: BlobId([0; 16]),
            cap: Capability([0; 32]),
            expires_at: 0,
        }
    }

    #[test]
    fn a_file_shows_its_name_size_state_and_caption() {
        use super::super::app::tests::{contact, message};
        use hestia_protocol::envelope::EnvelopeId;
        use hestia_store::client::{FileState, StoredFile};
        let mut a = App::default();
        a.apply(Update::Contacts(vec![contact("bob", 2)]));
        a.apply(Update::History(vec![message(
            "bob",
            1,
            "",
            Direction::Incoming,
        )]));
        a.apply(Update::Files(vec![(
            EnvelopeId([1; 16]),
            StoredFile {
                file: file_ref("report.pdf", 3 << 20),
                direction: Direction::Incoming,
                state: FileState::Received,
            },
        )]));
        let s = screen(&a);
        assert!(s.contains("report.pdf (3.0 MiB) Ctrl-G to fetch"), "{s}");
        assert!(s.contains("minutes"), "{s}");
        assert!(!s.contains('\u{1b}'), "{s}");
    }

    #[test]
    fn paging_reaches_the_first_of_thousands_of_messages_and_warnings_stay_in_view() {
        use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
        let mut a = App::default();
        a.apply(Update::Contacts(vec![super::super::app::tests::contact(
            "bob", 2,
        )]));
        let many = (0..3000u32)
            .map(|i| {
                super::super::app::tests::message(
                    "bob",
                    0,
                    &format!("msg-{i}"),
                    Direction::Incoming,
                )
            })
            .collect();
        a.apply(Update::History(many));
        a.apply(Update::KeyWarning {
            contact: "bob".into(),
            text: "bob's key changed".into(),
        });
        let s = screen(&a);
        assert!(s.contains("msg-2999") && !s.contains("msg-0 "), "{s}");
        a.key(KeyEvent::new(KeyCode::Home, KeyModifiers::CONTROL));
        let s = screen(&a);
        assert!(s.contains("msg-0 ") && s.contains("msg-1 "), "{s}");
        assert!(!s.contains("msg-2999"));
        assert!(s.contains("bob's key changed"), "pinned: {s}");
        assert!(s.contains("lines back"));
        a.key(KeyEvent::new(KeyCode::End, KeyModifiers::CONTROL));
        assert!(screen(&a).contains("msg-2999"));
    }
}
