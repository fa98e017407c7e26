//! What a call plays and what it does with what it hears: 20 ms frames of 48 kHz mono samples,
//! Opus on the wire. Sources and sinks are traits so a tone, a WAV file or (later) a microphone
//! and speaker plug in alike; the tests use a tone and a meter.

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Channels, SampleRate};

/// Samples per second.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame.
pub const FRAME_SAMPLES: usize = 960;
/// Largest Opus packet we produce or accept (RFC 6716 allows 1275 bytes per frame).
pub const MAX_OPUS_PACKET: usize = 1500;

/// Where outgoing audio comes from.
pub trait AudioSource: Send {
    /// Fills one frame. At the end of the source (a file played out) it fills silence.
    fn frame(&mut self, out: &mut [i16; FRAME_SAMPLES]);
}

/// Where incoming audio goes.
pub trait AudioSink: Send {
    /// One decoded frame (a lost frame arrives as Opus's concealment).
    fn frame(&mut self, samples: &[i16]);
}

/// A sine tone.
pub struct Tone {
    freq: f64,
    phase: f64,
}

impl Tone {
    pub fn new(freq_hz: f64) -> Tone {
        Tone {
            freq: freq_hz,
            phase: 0.0,
        }
    }
}

impl AudioSource for Tone {
    fn frame(&mut self, out: &mut [i16; FRAME_SAMPLES]) {
        let step = std::f64::consts::TAU * self.freq / f64::from(SAMPLE_RATE);
        for s in out.iter_mut() {
            *s = (self.phase.sin() * 8000.0) as i16;
            self.phase = (self.phase + step) % std::f64::consts::TAU;
        }
    }
}

/// Silence.
pub struct Silence;

impl AudioSource for Silence {
    fn frame(&mut self, out: &mut [i16; FRAME_SAMPLES]) {
        out.fill(0);
    }
}

/// Counts what it hears: samples, and sign changes (a tone of f Hz makes 2f a second), so a
/// test can tell which tone arrived without listening.
#[derive(Default, Clone, Debug)]
pub struct Meter {
    pub samples: u64,
    pub crossings: u64,
    /// Mean absolute amplitude of the frames so far.
    pub level_sum: u64,
    last_positive: Option<bool>,
}

impl Meter {
    /// The dominant frequency heard, from the sign changes.
    pub fn frequency_hz(&self) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        self.crossings as f64 / 2.0 * f64::from(SAMPLE_RATE) / self.samples as f64
    }

    pub fn mean_level(&self) -> u64 {
        self.level_sum.checked_div(self.samples).unwrap_or(0)
    }
}

impl AudioSink for Meter {
    fn frame(&mut self, samples: &[i16]) {
        for s in samples {
            // A small dead band keeps near-silence from counting as crossings.
            if s.unsigned_abs() > 200 {
                let positive = *s > 0;
                if self.last_positive.is_some_and(|p| p != positive) {
                    self.crossings += 1;
                }
                self.last_positive = Some(positive);
            }
            self.level_sum += u64::from(s.unsigned_abs());
        }
        self.samples += samples.len() as u64;
    }
}

/// A sink shared with whoever made it (the CLI's recorder, a test's meter).
impl<T: AudioSink> AudioSink for std::sync::Arc<std::sync::Mutex<T>> {
    fn frame(&mut self, samples: &[i16]) {
        if let Ok(mut s) = self.lock() {
            s.frame(samples);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the Opus codec failed: {0}")]
pub struct CodecError(String);

/// An Opus encoder and decoder for one call (mono, 48 kHz, tuned for speech).
pub struct Codec {
    encoder: Encoder,
    decoder: Decoder,
}

// libopus state is plain memory with no thread affinity; each call owns its codec alone.
unsafe impl Send for Codec {}

impl Codec {
    pub fn new() -> Result<Codec, CodecError> {
        let err = |e: audiopus::Error| CodecError(e.to_string());
        Ok(Codec {
            encoder: Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)
                .map_err(err)?,
            decoder: Decoder::new(SampleRate::Hz48000, Channels::Mono).map_err(err)?,
        })
    }

    pub fn encode(&mut self, frame: &[i16; FRAME_SAMPLES]) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![0u8; MAX_OPUS_PACKET];
        let n = self
            .encoder
            .encode(frame, &mut out)
            .map_err(|e| CodecError(e.to_string()))?;
        out.truncate(n);
        Ok(out)
    }

    /// Decodes one packet from the peer (`None`: it was lost; Opus conceals it). A packet
    /// that does not decode is an error, not a panic: it came from the network.
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<Vec<i16>, CodecError> {
        if packet.is_some_and(|p| p.is_empty() || p.len() > MAX_OPUS_PACKET) {
            return Err(CodecError("packet length out of range".into()));
        }
        // Up to 120 ms in one packet; a lost one is concealed as one frame (the decoder fills
        // whatever length it is given then).
        let len = if packet.is_some() {
            FRAME_SAMPLES * 6
        } else {
            FRAME_SAMPLES
        };
        let mut out = vec![0i16; len];
        let n = self
            .decoder
            .decode(packet, &mut out[..], false)
            .map_err(|e| CodecError(e.to_string()))?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_survives_opus_and_the_meter_names_its_frequency() {
        let mut codec = Codec::new().unwrap();
        let mut tone = Tone::new(440.0);
        let mut meter = Meter::default();
        let mut frame = [0i16; FRAME_SAMPLES];
        for _ in 0..50 {
            tone.frame(&mut frame);
            let packet = codec.encode(&frame).unwrap();
            assert!(packet.len() < 400);
            meter.frame(&codec.decode(Some(&packet)).unwrap());
        }
        let f = meter.frequency_hz();
        assert!((f - 440.0).abs() < 20.0, "{f} Hz");
        assert!(codec.decode(Some(&[0xff; 3])).is_err() || codec.decode(Some(&[])).is_err());
        // Concealment of a lost frame is a frame of samples.
        assert_eq!(codec.decode(None).unwrap().len(), FRAME_SAMPLES);
    }
}
