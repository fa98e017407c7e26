//! Drawing the terminal client: contacts on the left (trust mark, unread count), the
//! conversation on the right (time, delivery marks, calls, key warnings), the compose line and
//! a status line below; help and safety-number overlays. Every text from other users goes
//! through `protocol::display`, so no message can move the cursor or restyle the screen.

use super::app::{App, delivery_mark, trust_mark};
use hestia_protocol::display;
use hestia_store::client::{Direction, MessageState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};

const HELP: &str = "\
Enter        send what you typed to the selected contact
Tab, Ctrl-N  next contact          Shift-Tab, Ctrl-P  previous
PgUp, PgDn   scroll the conversation
Ctrl-V       the contact's safety number and QR code (compare it in person)
Esc          clear the line; quit when it is empty     Ctrl-C  quit
?            this help (any key closes it)

Marks: ✓ verified  · unverified (trusted on first use)  ? message request
       ! a new key claims this name: compare its safety number before accepting it
       (hestia contact accept NAME --confirm, or reject)
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
    f.render_widget(
        Paragraph::new(format!(" {}   ? help", display::line(&app.status)))
            .style(Style::default().fg(Color::DarkGray)),
        status,
    );
    if app.help {
        overlay(f, " help ", HELP);
    }
    if let Some((of, text)) = &app.safety {
        overlay(f, &format!(" safety number: {} ", display::line(of)), text);
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
                Style::default().fg(Color::Red)
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

fn draw_conversation(f: &mut Frame, app: &App, area: Rect) {
    let Some(c) = app.selected_contact() else {
        f.render_widget(Block::default().borders(Borders::ALL), area);
        return;
    };
    let mut lines: Vec<Line> = Vec::new();
    if let Some(claimed) = &c.claims {
        lines.push(Line::styled(
            format!(
                "!! this key wrote as {:?}, whose key is another: it may be them on a new device, \
                 or someone else. Compare safety numbers (Ctrl-V) before `hestia contact accept`.",
                display::line(claimed)
            ),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    for w in app.warnings.get(&c.name).into_iter().flatten() {
        lines.push(Line::styled(
            format!("!! {}", display::line(w)),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    for m in app.messages.get(&c.name).into_iter().flatten() {
        let time = Span::styled(hhmm(m.at), Style::default().fg(Color::DarkGray));
        if let MessageState::Call(o) = &m.state {
            let incoming = m.direction == Direction::Incoming;
            let what = crate::describe_call(o, incoming);
            let text = if incoming {
                format!(" call from them: {what}")
            } else {
                format!(" call to them: {what}")
            };
            lines.push(Line::from(vec![
                time,
                Span::styled(text, Style::default().fg(Color::Cyan)),
            ]));
            continue;
        }
        let body = display::block(&m.text);
        let (who, mark) = match m.direction {
            Direction::Incoming => (display::line(&m.peer_name).into_owned(), String::new()),
            Direction::Outgoing => ("me".into(), format!("  {}", delivery_mark(&m.state))),
        };
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
        if !mark.is_empty()
            && let Some(last) = lines.last_mut()
        {
            last.spans
                .push(Span::styled(mark, Style::default().fg(Color::DarkGray)));
        }
    }
    let height = area.height.saturating_sub(2) as usize;
    let end = lines.len().saturating_sub(app.scroll);
    let start = end.saturating_sub(height);
    let shown: Vec<Line> = lines[start..end].to_vec();
    let title = format!(
        " {} {} ",
        display::line(&c.name),
        if c.trust == hestia_store::client::Trust::Verified {
            "(verified)"
        } else {
            "(unverified)"
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
mod tests {
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
}
