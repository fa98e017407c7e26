//! The terminal client's state and what keys do to it, without a terminal or a device: keys and
//! the device worker's updates go in, [`Action`]s for the worker come out, and `ui` draws it.

use hestia_protocol::envelope::EnvelopeId;
use hestia_store::client::{
    Contact, Direction, FileState, MessageState, StoredFile, StoredMessage, Trust,
};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::HashMap;
use std::path::PathBuf;

/// Lines PgUp and PgDn move the conversation by.
pub const PAGE_LINES: usize = 10;
/// Longest line the compose box takes (a message is at most 12 288 bytes).
pub const MAX_COMPOSE_BYTES: usize = 12_288;

/// What the user asked the device to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: String,
        text: String,
    },
    /// Show this contact's safety number (and its QR code).
    SafetyNumber {
        of: String,
    },
    /// Encrypt and upload this file, then send it (typed as `/file PATH`).
    SendFile {
        to: String,
        path: PathBuf,
    },
    /// Download, decrypt and verify a received file into the downloads directory.
    GetFile {
        id: EnvelopeId,
    },
    /// Ring this contact.
    Ring {
        to: String,
    },
    /// The user compared this contact's safety number and it matches: mark it verified, or,
    /// for a key that claims another contact's name, accept it as that contact's new key.
    Confirm {
        of: String,
    },
    /// Answer a message request without writing: a contact from now on.
    AcceptRequest {
        name: String,
    },
    /// Reject this contact's key (asked twice): removed, and what it sends dropped.
    Reject {
        name: String,
    },
    /// Answer, decline or hang up the call on screen (goes to the running call, not the
    /// worker's queue: the worker is inside the call).
    Call(CallKey),
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKey {
    Answer,
    Decline,
    Hangup,
}

/// The call on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallBar {
    pub peer: String,
    pub incoming: bool,
    pub connected: bool,
}

/// What the device worker tells the screen.
#[derive(Debug)]
pub enum Update {
    Contacts(Vec<Contact>),
    /// The whole history (or its newest part), oldest first.
    History(Vec<StoredMessage>),
    /// A key that wrote under `claims`'s name: shown loudly in that conversation.
    KeyWarning {
        contact: String,
        text: String,
    },
    SafetyNumber {
        of: String,
        text: String,
    },
    /// A one-line status (connected, reconnecting, an error).
    Status(String),
    /// The call ringing or running (none: it ended).
    Call(Option<CallBar>),
    /// Every file sent or received, by the id of its message.
    Files(Vec<(EnvelopeId, StoredFile)>),
}

#[derive(Debug, Default)]
pub struct App {
    pub contacts: Vec<Contact>,
    pub selected: usize,
    /// Per contact: its messages, oldest first.
    pub messages: HashMap<String, Vec<StoredMessage>>,
    /// Per contact: incoming messages not seen while it was selected.
    pub unread: HashMap<String, usize>,
    /// Per contact: warnings shown inline (key changes).
    pub warnings: HashMap<String, Vec<String>>,
    pub compose: String,
    pub status: String,
    pub help: bool,
    /// A safety number being shown: (contact, text).
    pub safety: Option<(String, String)>,
    /// Lines scrolled back from the newest (at most the conversation's lines).
    pub scroll: usize,
    /// A contact whose rejection waits for a second Ctrl-X.
    pub rejecting: Option<String>,
    /// The call ringing or running.
    pub call: Option<CallBar>,
    /// Files sent and received, by the id of the message that carries each.
    pub files: HashMap<EnvelopeId, StoredFile>,
    /// Incoming messages counted already, so a new history counts only new ones as unread.
    seen: HashMap<String, usize>,
    /// A history came already (the first one is what was there before: nothing unread).
    had_history: bool,
}

impl App {
    pub fn selected_name(&self) -> Option<&str> {
        self.contacts.get(self.selected).map(|c| c.name.as_str())
    }

    pub fn selected_contact(&self) -> Option<&Contact> {
        self.contacts.get(self.selected)
    }

    /// A key press; `Some` when the device has something to do.
    pub fn key(&mut self, k: KeyEvent) -> Option<Action> {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if self.help || self.safety.is_some() {
            // Any key closes an overlay (Ctrl-C still quits); on a safety number, `y` says it
            // matched.
            if ctrl && k.code == KeyCode::Char('c') {
                return Some(Action::Quit);
            }
            self.help = false;
            let shown = self.safety.take();
            if let (Some((of, _)), KeyCode::Char('y'), false) = (shown, k.code, ctrl) {
                return Some(Action::Confirm { of });
            }
            return None;
        }
        // A rejection is confirmed by a second Ctrl-X and nothing else.
        let rejecting = self.rejecting.take();
        if rejecting.is_some() && !(ctrl && k.code == KeyCode::Char('x')) {
            self.status = "kept".into();
        }
        match (k.code, ctrl) {
            (KeyCode::Char('c'), true) | (KeyCode::Char('q'), true) => return Some(Action::Quit),
            (KeyCode::Esc, _) if self.compose.is_empty() => return Some(Action::Quit),
            (KeyCode::Esc, _) => self.compose.clear(),
            (KeyCode::Char('?'), _) if self.compose.is_empty() => self.help = true,
            (KeyCode::Tab, _) | (KeyCode::Down, true) | (KeyCode::Char('n'), true) => {
                self.select(self.selected + 1)
            }
            (KeyCode::BackTab, _) | (KeyCode::Up, true) | (KeyCode::Char('p'), true) => {
                self.select(self.selected + self.contacts.len().max(1) - 1)
            }
            (KeyCode::PageUp, _) => {
                self.scroll = self
                    .scroll
                    .saturating_add(PAGE_LINES)
                    .min(self.max_scroll())
            }
            (KeyCode::PageDown, _) => self.scroll = self.scroll.saturating_sub(PAGE_LINES),
            (KeyCode::Home, true) => self.scroll = self.max_scroll(),
            (KeyCode::End, true) => self.scroll = 0,
            (KeyCode::Char('y'), true) => {
                let c = self.selected_contact()?;
                if c.claims.is_some() {
                    self.status = "this key claims another contact's name: compare its safety \
                                   number first (Ctrl-V), then y if it matches"
                        .into();
                    return None;
                }
                if c.origin != hestia_store::client::Origin::Request {
                    self.status = "not a message request".into();
                    return None;
                }
                return Some(Action::AcceptRequest {
                    name: c.name.clone(),
                });
            }
            (KeyCode::Char('x'), true) => {
                let name = self.selected_name()?.to_string();
                if rejecting.as_deref() == Some(name.as_str()) {
                    return Some(Action::Reject { name });
                }
                // The status line is made safe where it is drawn (`ui::draw`).
                self.status = format!(
                    "reject {name}'s key (removed, and what it sends dropped)? Ctrl-X again to \
                     reject, any other key to keep it"
                );
                self.rejecting = Some(name);
            }
            (KeyCode::Char('r'), true) if self.call.is_none() => {
                return self
                    .selected_name()
                    .map(|n| Action::Ring { to: n.to_string() });
            }
            (KeyCode::Char('a'), true) if self.call.as_ref().is_some_and(|c| c.incoming) => {
                return Some(Action::Call(CallKey::Answer));
            }
            (KeyCode::Char('d'), true)
                if self
                    .call
                    .as_ref()
                    .is_some_and(|c| c.incoming && !c.connected) =>
            {
                return Some(Action::Call(CallKey::Decline));
            }
            (KeyCode::Char('e'), true) if self.call.is_some() => {
                return Some(Action::Call(CallKey::Hangup));
            }
            (KeyCode::Char('g'), true) => {
                let newest = self.fetchable_file();
                if newest.is_none() {
                    self.status = "no file to fetch in this conversation".into();
                }
                return newest.map(|id| Action::GetFile { id });
            }
            (KeyCode::Char('v'), true) => {
                return self
                    .selected_name()
                    .map(|n| Action::SafetyNumber { of: n.to_string() });
            }
            (KeyCode::Enter, _) => {
                let text = self.compose.trim().to_string();
                let to = self.selected_name()?.to_string();
                if text.is_empty() {
                    return None;
                }
                self.compose.clear();
                self.scroll = 0;
                if let Some(path) = text.strip_prefix("/file ") {
                    return Some(Action::SendFile {
                        to,
                        path: PathBuf::from(path.trim()),
                    });
                }
                return Some(Action::Send { to, text });
            }
            (KeyCode::Backspace, _) => {
                self.compose.pop();
            }
            (KeyCode::Char(c), false)
                if self.compose.len() + c.len_utf8() <= MAX_COMPOSE_BYTES && !c.is_control() =>
            {
                self.compose.push(c);
            }
            _ => {}
        }
        None
    }

    /// How far the selected conversation scrolls back: its lines less one screen's worth is
    /// enough, but the screen's height is the drawing's, so all its lines.
    pub fn max_scroll(&self) -> usize {
        let Some(name) = self.selected_name() else {
            return 0;
        };
        self.messages.get(name).map_or(0, |ms| {
            ms.iter().map(|m| m.text.lines().count().max(1)).sum()
        })
    }

    /// The newest file received in the selected conversation that is not downloaded yet.
    pub fn fetchable_file(&self) -> Option<EnvelopeId> {
        let name = self.selected_name()?;
        self.messages
            .get(name)?
            .iter()
            .rev()
            .filter(|m| m.direction == Direction::Incoming)
            .find(|m| {
                self.files.get(&m.envelope_id).is_some_and(|f| {
                    matches!(f.state, FileState::Received | FileState::Downloading { .. })
                })
            })
            .map(|m| m.envelope_id)
    }

    fn select(&mut self, i: usize) {
        if self.contacts.is_empty() {
            return;
        }
        self.selected = i % self.contacts.len();
        self.scroll = 0;
        if let Some(n) = self.selected_name().map(str::to_string) {
            self.unread.remove(&n);
        }
    }

    pub fn apply(&mut self, u: Update) {
        match u {
            Update::Contacts(mut cs) => {
                let keep = self.selected_name().map(str::to_string);
                // Requests and keys claiming a name first: they need the user.
                cs.sort_by_key(|c| (c.claims.is_none(), c.name.clone()));
                self.contacts = cs;
                self.selected = keep
                    .and_then(|k| self.contacts.iter().position(|c| c.name == k))
                    .unwrap_or(0);
            }
            Update::History(all) => {
                let mut by: HashMap<String, Vec<StoredMessage>> = HashMap::new();
                for m in all {
                    by.entry(m.peer_name.clone()).or_default().push(m);
                }
                let current = self.selected_name().map(str::to_string);
                for (name, list) in &by {
                    let incoming = list
                        .iter()
                        .filter(|m| m.direction == Direction::Incoming)
                        .count();
                    let before = self.seen.insert(name.clone(), incoming).unwrap_or(0);
                    if self.had_history
                        && incoming > before
                        && current.as_deref() != Some(name.as_str())
                    {
                        *self.unread.entry(name.clone()).or_default() += incoming - before;
                    }
                }
                self.messages = by;
                self.had_history = true;
            }
            Update::KeyWarning { contact, text } => {
                let w = self.warnings.entry(contact).or_default();
                if !w.contains(&text) {
                    w.push(text);
                }
            }
            Update::SafetyNumber { of, text } => self.safety = Some((of, text)),
            Update::Status(s) => self.status = s,
            Update::Call(c) => self.call = c,
            Update::Files(fs) => self.files = fs.into_iter().collect(),
        }
    }
}

/// A contact's mark in the list: verified, unverified, or needing a decision.
pub fn trust_mark(c: &Contact) -> &'static str {
    if c.claims.is_some() {
        "!"
    } else if c.origin == hestia_store::client::Origin::Request {
        "?"
    } else if c.trust == Trust::Verified {
        "✓"
    } else {
        "·"
    }
}

/// An outgoing message's delivery mark.
pub fn delivery_mark(s: &MessageState) -> &'static str {
    match s {
        MessageState::Queued | MessageState::WaitingForKeys | MessageState::Unsent => "…",
        MessageState::DeliveredToNode => "✓",
        MessageState::DeliveredToDevice => "✓✓",
        MessageState::Expired => "expired",
        MessageState::NoSuchUser | MessageState::Failed(_) => "failed",
        MessageState::Received | MessageState::HeldKeyChanged | MessageState::Call(_) => "",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hestia_protocol::envelope::EnvelopeId;
    use hestia_protocol::identity::{Address, UserId};
    use hestia_store::client::Origin;

    pub(crate) fn contact(name: &str, n: u8) -> Contact {
        Contact {
            name: name.into(),
            handle: None,
            address: Address {
                user: UserId([n; 32]),
                node: "12D3KooWnode".into(),
            },
            trust: Trust::Unverified,
            added_at: 0,
            origin: Origin::Added,
            claims: None,
            reset_asked_at: None,
        }
    }

    pub(crate) fn message(peer: &str, n: u8, text: &str, dir: Direction) -> StoredMessage {
        StoredMessage {
            envelope_id: EnvelopeId([n; 16]),
            direction: dir,
            peer: UserId([1; 32]),
            peer_node: "12D3KooWnode".into(),
            peer_name: peer.into(),
            text: text.into(),
            at: 1_800_000_000_000 + n as u64 * 60_000,
            expires_at: 0,
            state: if dir == Direction::Incoming {
                MessageState::Received
            } else {
                MessageState::DeliveredToNode
            },
        }
    }

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn typing_and_enter_send_to_the_selected_contact_and_tab_moves_on() {
        let mut a = App::default();
        a.apply(Update::Contacts(vec![
            contact("bob", 2),
            contact("alice", 1),
        ]));
        assert_eq!(a.selected_name(), Some("alice"), "sorted by name");
        for c in "hi bob".chars() {
            assert_eq!(a.key(key(KeyCode::Char(c))), None);
        }
        a.key(key(KeyCode::Tab));
        assert_eq!(
            a.key(key(KeyCode::Enter)),
            Some(Action::Send {
                to: "bob".into(),
                text: "hi bob".into()
            })
        );
        assert!(a.compose.is_empty());
        assert_eq!(a.key(key(KeyCode::Enter)), None, "nothing to send");
        a.key(key(KeyCode::Char('?')));
        assert!(a.help);
        a.key(key(KeyCode::Char('x')));
        assert!(!a.help, "any key closes the help");
        assert_eq!(a.key(key(KeyCode::Esc)), Some(Action::Quit));
    }

    #[test]
    fn new_incoming_messages_count_as_unread_for_other_conversations_only() {
        let mut a = App::default();
        a.apply(Update::Contacts(vec![
            contact("alice", 1),
            contact("bob", 2),
        ]));
        a.apply(Update::History(vec![message(
            "bob",
            1,
            "old",
            Direction::Incoming,
        )]));
        assert!(a.unread.is_empty(), "what was there at start is not unread");
        a.apply(Update::History(vec![
            message("bob", 1, "old", Direction::Incoming),
            message("bob", 2, "new", Direction::Incoming),
            message("alice", 3, "hey", Direction::Incoming),
        ]));
        assert_eq!(a.unread.get("bob"), Some(&1));
        assert_eq!(a.unread.get("alice"), None, "alice is on screen");
        a.key(key(KeyCode::Tab));
        assert_eq!(a.unread.get("bob"), None, "seen once selected");
    }

    #[test]
    fn call_keys_ring_answer_decline_and_hang_up_only_when_they_apply() {
        let ctrl = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
        let mut a = App::default();
        a.apply(Update::Contacts(vec![contact("bob", 2)]));
        assert_eq!(a.key(ctrl('a')), None, "nothing to answer");
        assert_eq!(a.key(ctrl('e')), None, "nothing to hang up");
        assert_eq!(a.key(ctrl('r')), Some(Action::Ring { to: "bob".into() }));
        a.apply(Update::Call(Some(CallBar {
            peer: "bob".into(),
            incoming: true,
            connected: false,
        })));
        assert_eq!(a.key(ctrl('r')), None, "one call at a time");
        assert_eq!(a.key(ctrl('d')), Some(Action::Call(CallKey::Decline)));
        assert_eq!(a.key(ctrl('a')), Some(Action::Call(CallKey::Answer)));
        a.apply(Update::Call(Some(CallBar {
            peer: "bob".into(),
            incoming: true,
            connected: true,
        })));
        assert_eq!(
            a.key(ctrl('d')),
            None,
            "an answered call is hung up, not declined"
        );
        assert_eq!(a.key(ctrl('e')), Some(Action::Call(CallKey::Hangup)));
        a.apply(Update::Call(None));
        assert_eq!(a.call, None);
    }

    #[test]
    fn slash_file_sends_a_file_and_ctrl_g_fetches_the_newest_one_not_yet_here() {
        let mut a = App::default();
        a.apply(Update::Contacts(vec![contact("bob", 2)]));
        for c in "/file ./talk.mp4".chars() {
            a.key(key(KeyCode::Char(c)));
        }
        assert_eq!(
            a.key(key(KeyCode::Enter)),
            Some(Action::SendFile {
                to: "bob".into(),
                path: "./talk.mp4".into()
            })
        );
        let ctrl_g = KeyEvent::new(KeyCode::Char('g'), KeyModifiers::CONTROL);
        assert_eq!(a.key(ctrl_g), None, "no file yet");
        assert!(a.status.contains("no file"));
        a.apply(Update::History(vec![
            message("bob", 1, "", Direction::Incoming),
            message("bob", 2, "", Direction::Incoming),
        ]));
        let file = |state| StoredFile {
            file: crate::chat::ui::tests::file_ref("a.pdf", 2048),
            direction: Direction::Incoming,
            state,
        };
        a.apply(Update::Files(vec![
            (EnvelopeId([1; 16]), file(FileState::Received)),
            (
                EnvelopeId([2; 16]),
                file(FileState::Downloaded {
                    path: "/tmp/a.pdf".into(),
                }),
            ),
        ]));
        assert_eq!(
            a.key(ctrl_g),
            Some(Action::GetFile {
                id: EnvelopeId([1; 16])
            }),
            "the newest one not downloaded yet"
        );
    }

    #[test]
    fn requests_and_claims_are_answered_with_keys_and_a_rejection_is_asked_twice() {
        let ctrl = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
        let mut a = App::default();
        let mut request = contact("carol", 3);
        request.origin = Origin::Request;
        let mut claim = contact("bob-1a2b3c4d", 4);
        claim.claims = Some("bob".into());
        a.apply(Update::Contacts(vec![
            contact("bob", 2),
            request,
            claim.clone(),
        ]));
        assert_eq!(a.selected_name(), Some("bob-1a2b3c4d"), "claims first");
        assert_eq!(a.key(ctrl('y')), None, "a claim is not accepted blind");
        assert!(a.status.contains("compare its safety"));
        // The safety number on screen, then `y`: it matched.
        a.apply(Update::SafetyNumber {
            of: claim.name.clone(),
            text: "12345".into(),
        });
        assert_eq!(
            a.key(key(KeyCode::Char('y'))),
            Some(Action::Confirm {
                of: "bob-1a2b3c4d".into()
            })
        );
        a.apply(Update::SafetyNumber {
            of: claim.name.clone(),
            text: "12345".into(),
        });
        assert_eq!(a.key(key(KeyCode::Char('n'))), None, "any other key: no");
        assert!(a.safety.is_none());
        // A plain request.
        a.key(key(KeyCode::Tab));
        a.key(key(KeyCode::Tab));
        assert_eq!(a.selected_name(), Some("carol"));
        assert_eq!(
            a.key(ctrl('y')),
            Some(Action::AcceptRequest {
                name: "carol".into()
            })
        );
        // Rejecting: twice, with nothing between.
        assert_eq!(a.key(ctrl('x')), None);
        assert!(a.status.contains("Ctrl-X again"));
        assert_eq!(a.key(key(KeyCode::Char('z'))), None);
        assert_eq!(a.status, "kept");
        assert_eq!(a.key(ctrl('x')), None);
        assert_eq!(
            a.key(ctrl('x')),
            Some(Action::Reject {
                name: "carol".into()
            })
        );
        // Bob is neither: Ctrl-Y says so.
        a.key(key(KeyCode::BackTab));
        assert_eq!(a.selected_name(), Some("bob"));
        assert_eq!(a.key(ctrl('y')), None);
        assert_eq!(a.status, "not a message request");
    }

    #[test]
    fn a_long_history_is_kept_whole_and_scrolls_back_to_its_beginning() {
        let mut a = App::default();
        a.apply(Update::Contacts(vec![contact("bob", 2)]));
        let many: Vec<StoredMessage> = (0..2000u32)
            .map(|i| {
                let mut m = message("bob", 0, &format!("m{i}"), Direction::Incoming);
                m.envelope_id = EnvelopeId([(i % 256) as u8; 16]);
                m
            })
            .collect();
        a.apply(Update::History(many));
        assert_eq!(a.messages["bob"].len(), 2000, "nothing dropped past 500");
        for _ in 0..500 {
            a.key(key(KeyCode::PageUp));
        }
        assert_eq!(a.scroll, 2000, "PgUp stops at the beginning");
        a.key(key(KeyCode::PageDown));
        assert_eq!(a.scroll, 2000 - PAGE_LINES);
        a.key(KeyEvent::new(KeyCode::End, KeyModifiers::CONTROL));
        assert_eq!(a.scroll, 0);
        a.key(KeyEvent::new(KeyCode::Home, KeyModifiers::CONTROL));
        assert_eq!(a.scroll, 2000);
    }
}
