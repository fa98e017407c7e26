//! The microphone and the speaker for calls (cargo feature `mic`, cpal over ALSA on Linux).
//!
//! A call's media clock pulls one 20 ms frame of 48 kHz mono from its [`AudioSource`] and hands
//! every decoded frame to its [`AudioSink`]; a sound card runs on its own clock, at its own
//! rate, with its own channel count, on a thread of its own. Between the two sit a bounded
//! [`Ring`] (at most [`MAX_BUFFERED_MS`] of sound: when one side runs ahead, the oldest samples
//! go, so delay never grows) and a [`Resampler`] from the card's rate to 48 kHz or back. Both
//! are plain code, tested without a sound card; only `device` touches cpal.

use hestia_node::client::call::audio::FRAME_SAMPLES;
use std::collections::VecDeque;

/// The call's sample rate.
#[cfg_attr(not(feature = "mic"), allow(dead_code))]
pub const CALL_RATE: u32 = 48_000;

/// The most sound held between the card and the call, either way: 200 ms.
pub const MAX_BUFFERED_MS: usize = 200;

/// A bounded first-in, first-out buffer of samples that drops its oldest when full.
#[cfg_attr(not(feature = "mic"), allow(dead_code))]
pub struct Ring<T> {
    samples: VecDeque<T>,
    cap: usize,
    /// Samples dropped because the reader fell behind.
    pub dropped: u64,
    /// Samples the reader asked for that were not there (played as silence).
    pub missing: u64,
}

#[cfg_attr(not(feature = "mic"), allow(dead_code))]
impl<T: Copy + Default> Ring<T> {
    /// A ring holding at most [`MAX_BUFFERED_MS`] of sound at `rate` samples per second.
    pub fn for_rate(rate: u32) -> Ring<T> {
        let cap = (rate as usize * MAX_BUFFERED_MS / 1000).max(FRAME_SAMPLES);
        Ring {
            samples: VecDeque::with_capacity(cap),
            cap,
            dropped: 0,
            missing: 0,
        }
    }

    pub fn push(&mut self, s: T) {
        if self.samples.len() == self.cap {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(s);
    }

    /// Fills `out` from the oldest samples; silence (`T::default()`) where there are none.
    pub fn fill(&mut self, out: &mut [T]) {
        for o in out.iter_mut() {
            *o = match self.samples.pop_front() {
                Some(s) => s,
                None => {
                    self.missing += 1;
                    T::default()
                }
            };
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.samples.len()
    }
}

/// Linear-interpolating sample-rate conversion of one channel, chunk by chunk: the state
/// carries across calls, so a stream cut into any chunks comes out the same.
#[cfg_attr(not(feature = "mic"), allow(dead_code))]
pub struct Resampler {
    /// Input samples per output sample.
    step: f64,
    /// Where the next output falls between `last` (0) and the next input (1).
    at: f64,
    last: f32,
}

#[cfg_attr(not(feature = "mic"), allow(dead_code))]
impl Resampler {
    pub fn new(from_rate: u32, to_rate: u32) -> Resampler {
        Resampler {
            step: from_rate as f64 / to_rate as f64,
            at: 0.0,
            last: 0.0,
        }
    }

    /// Feeds one input sample; calls `out` for each output sample it completes.
    pub fn push(&mut self, sample: f32, mut out: impl FnMut(f32)) {
        while self.at < 1.0 {
            out(self.last + (sample - self.last) * self.at as f32);
            self.at += self.step;
        }
        self.at -= 1.0;
        self.last = sample;
    }
}

/// A sample in -1..1 as 16-bit PCM, clipped.
#[cfg_attr(not(feature = "mic"), allow(dead_code))]
pub fn to_pcm(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * i16::MAX as f32) as i16
}

#[cfg(feature = "mic")]
pub mod device;

#[cfg(test)]
mod tests {
    use super::*;
    use hestia_node::client::call::audio::{AudioSink, Meter};

    #[test]
    fn the_ring_keeps_the_newest_and_pads_with_silence() {
        let mut r = Ring::<i16>::for_rate(48_000);
        assert_eq!(r.cap, 9_600);
        for i in 0..10_000 {
            r.push(i as i16);
        }
        assert_eq!((r.len(), r.dropped), (9_600, 400));
        let mut out = [0i16; 4];
        r.fill(&mut out);
        assert_eq!(
            out,
            [400, 401, 402, 403],
            "the oldest that are left come first"
        );
        let mut rest = vec![1i16; 9_600];
        r.fill(&mut rest);
        assert_eq!(r.missing, 4);
        assert_eq!(&rest[9_594..], &[9_998, 9_999, 0, 0, 0, 0]);
    }

    /// A 440 Hz tone at a card's 44.1 kHz, fed in uneven chunks, comes out at 48 kHz with the
    /// right number of samples and still 440 Hz; and back down again.
    #[test]
    fn resampling_keeps_the_pitch_and_the_duration() {
        for card in [44_100u32, 48_000, 96_000, 16_000] {
            let mut up = Resampler::new(card, CALL_RATE);
            let mut call = Vec::new();
            let secs = 1.0;
            let n = (card as f64 * secs) as usize;
            for i in 0..n {
                let s = (i as f64 * 440.0 * std::f64::consts::TAU / card as f64).sin() * 0.5;
                up.push(s as f32, |o| call.push(to_pcm(o)));
            }
            let expected = CALL_RATE as usize;
            assert!(
                call.len().abs_diff(expected) <= 2,
                "{card} Hz: {} samples for one second",
                call.len()
            );
            let mut meter = Meter::default();
            for f in call.chunks(FRAME_SAMPLES) {
                meter.frame(f);
            }
            let hz = meter.frequency_hz();
            assert!((hz - 440.0).abs() < 15.0, "{card} Hz: heard {hz} Hz");

            let mut down = Resampler::new(CALL_RATE, card);
            let mut back = 0usize;
            for s in &call {
                down.push(*s as f32 / i16::MAX as f32, |_| back += 1);
            }
            assert!(back.abs_diff(n) <= 2, "{card} Hz: {back} back for {n}");
        }
    }

    #[test]
    fn pcm_conversion_clips() {
        assert_eq!(to_pcm(2.0), i16::MAX);
        assert_eq!(to_pcm(-2.0), -i16::MAX);
        assert_eq!(to_pcm(0.0), 0);
    }
}
