//! Call signalling: what two devices say to set up, answer and end a voice call. Every signal
//! travels inside the end-to-end session, as a letter's content ([`crate::envelope::Content`]),
//! so nodes relay it like any message and never see the SDP (keys' fingerprints, candidates).
//!
//! The media itself is WebRTC (DTLS-SRTP), set up from the SDP offer and answer carried here.

use serde::{Deserialize, Serialize};

/// Longest SDP a signal may carry: an audio-only offer with a data channel is about 1 KiB.
pub const MAX_SDP_BYTES: usize = 8 * 1024;
/// Candidates one signal may carry, and the longest one (an `a=candidate` line is ~100 bytes).
pub const MAX_CANDIDATES: usize = 8;
pub const MAX_CANDIDATE_BYTES: usize = 256;
/// An offer older than this (by the letter's sending time) rings nothing: the caller gave up.
pub const MAX_OFFER_AGE_MS: crate::Millis = 60_000;

/// Identifies one call attempt; chosen at random by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallId(pub [u8; 16]);

impl CallId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The messages of a call. No signal before the callee answers carries an address: the offer
/// and the answer hold no candidates, and each side sends its [`CallSignal::Candidates`] only
/// once the call is answered, so a phone that rings, or is declined, leaks nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallSignal {
    /// The caller rings: its SDP offer (audio, and a data channel for text), no candidates.
    Offer { call: CallId, sdp: String },
    /// The callee answered: its SDP answer, no candidates.
    Answer { call: CallId, sdp: String },
    /// ICE candidates (`a=candidate` values), sent by each side after the answer.
    Candidates {
        call: CallId,
        candidates: Vec<String>,
    },
    /// The callee turned the call down.
    Decline { call: CallId },
    /// The callee is in another call.
    Busy { call: CallId },
    /// Either side ended the call, and why.
    Hangup { call: CallId, reason: HangupReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HangupReason {
    /// Someone hung up (the caller, before an answer: stopped ringing).
    Normal,
    /// The caller's ringing timed out.
    NoAnswer,
    /// Media never flowed, or stopped.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallSignalError {
    #[error("call description of {0} bytes exceeds the limit of {MAX_SDP_BYTES}")]
    SdpTooLong(usize),
    #[error("call description holds a NUL or a control character other than CR, LF and tab")]
    SdpControl,
    #[error(
        "more than {MAX_CANDIDATES} candidates, or one longer than {MAX_CANDIDATE_BYTES} bytes"
    )]
    Candidates,
}

/// Glare: both devices rang each other at once. Both keep the call with the larger id, so
/// they agree without talking: `true` if `theirs` wins over `ours`.
pub fn theirs_wins(ours: CallId, theirs: CallId) -> bool {
    theirs > ours
}

impl CallSignal {
    pub fn call(&self) -> CallId {
        match self {
            CallSignal::Offer { call, .. }
            | CallSignal::Answer { call, .. }
            | CallSignal::Candidates { call, .. }
            | CallSignal::Decline { call }
            | CallSignal::Busy { call }
            | CallSignal::Hangup { call, .. } => *call,
        }
    }

    /// Checks what a peer sent: an SDP within [`MAX_SDP_BYTES`], text only (SDP is lines of
    /// printable text; anything else is refused before a parser sees it).
    pub fn check(&self) -> Result<(), CallSignalError> {
        if let CallSignal::Offer { sdp, .. } | CallSignal::Answer { sdp, .. } = self {
            if sdp.len() > MAX_SDP_BYTES {
                return Err(CallSignalError::SdpTooLong(sdp.len()));
            }
            if sdp
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t'))
            {
                return Err(CallSignalError::SdpControl);
            }
        }
        if let CallSignal::Candidates { candidates, .. } = self
            && (candidates.len() > MAX_CANDIDATES
                || candidates
                    .iter()
                    .any(|c| c.len() > MAX_CANDIDATE_BYTES || c.chars().any(char::is_control)))
        {
            return Err(CallSignalError::Candidates);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_bounded_text() {
        let call = CallId([1; 16]);
        let ok = CallSignal::Offer {
            call,
            sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into(),
        };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.call(), call);
        let long = CallSignal::Answer {
            call,
            sdp: "a".repeat(MAX_SDP_BYTES + 1),
        };
        assert_eq!(
            long.check(),
            Err(CallSignalError::SdpTooLong(MAX_SDP_BYTES + 1))
        );
        let escape = CallSignal::Offer {
            call,
            sdp: "v=0\r\n\u{1b}[2J".into(),
        };
        assert_eq!(escape.check(), Err(CallSignalError::SdpControl));
        let hangup = CallSignal::Hangup {
            call,
            reason: HangupReason::Normal,
        };
        assert_eq!(hangup.check(), Ok(()));
        assert_eq!(call.to_hex(), "01".repeat(16));
        let many = CallSignal::Candidates {
            call,
            candidates: vec!["candidate:1 1 udp 1 10.0.0.1 5000 typ host".into(); 9],
        };
        assert_eq!(many.check(), Err(CallSignalError::Candidates));
        let newline = CallSignal::Candidates {
            call,
            candidates: vec!["candidate:1 1 udp\r\na=evil".into()],
        };
        assert_eq!(newline.check(), Err(CallSignalError::Candidates));
    }

    #[test]
    fn glare_is_decided_the_same_way_on_both_sides() {
        let (a, b) = (CallId([1; 16]), CallId([2; 16]));
        assert!(theirs_wins(a, b));
        assert!(!theirs_wins(b, a));
        assert_ne!(theirs_wins(a, b), theirs_wins(b, a));
    }
}
