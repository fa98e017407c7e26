//! Call signalling: what two devices say to set up, answer and end a voice call. Every signal
//! travels inside the end-to-end session, as a letter's content ([`crate::envelope::Content`]),
//! so nodes relay it like any message and never see the SDP (keys' fingerprints, candidates).
//!
//! The media itself is WebRTC (DTLS-SRTP), set up from the SDP offer and answer carried here.

use serde::{Deserialize, Serialize};

/// Longest SDP a signal may carry: an audio-only offer with a handful of candidates is 1-2 KiB.
pub const MAX_SDP_BYTES: usize = 8 * 1024;

/// Identifies one call attempt; chosen at random by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallId(pub [u8; 16]);

impl CallId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallSignal {
    /// The caller rings: its SDP offer (audio, and a data channel for text).
    Offer { call: CallId, sdp: String },
    /// The callee answered: its SDP answer.
    Answer { call: CallId, sdp: String },
    /// The callee turned the call down.
    Decline { call: CallId },
    /// The callee is in another call.
    Busy { call: CallId },
    /// Either side ended the call (the caller, before an answer: it stopped ringing).
    Hangup { call: CallId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallSignalError {
    #[error("call description of {0} bytes exceeds the limit of {MAX_SDP_BYTES}")]
    SdpTooLong(usize),
    #[error("call description holds a NUL or a control character other than CR, LF and tab")]
    SdpControl,
}

impl CallSignal {
    pub fn call(&self) -> CallId {
        match self {
            CallSignal::Offer { call, .. }
            | CallSignal::Answer { call, .. }
            | CallSignal::Decline { call }
            | CallSignal::Busy { call }
            | CallSignal::Hangup { call } => *call,
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
        assert_eq!(CallSignal::Hangup { call }.check(), Ok(()));
        assert_eq!(call.to_hex(), "01".repeat(16));
    }
}
