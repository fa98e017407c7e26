//! WAV files as a call's source and sink: 16-bit PCM at 48 kHz, mono (a stereo file is mixed
//! down). Read and written as they play, never held whole in memory.

use super::audio::{AudioSink, AudioSource, FRAME_SAMPLES, SAMPLE_RATE};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a WAV file this can play: {0}")]
    Format(String),
}

/// Plays a WAV file, then silence.
pub struct WavSource {
    reader: BufReader<File>,
    channels: u16,
    /// Sample bytes left in the data chunk.
    left: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl WavSource {
    pub fn open(path: &Path) -> Result<WavSource, WavError> {
        let bad = |m: &str| WavError::Format(m.to_string());
        let mut reader = BufReader::new(File::open(path)?);
        let mut head = [0u8; 12];
        reader.read_exact(&mut head)?;
        if &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
            return Err(bad("no RIFF/WAVE header"));
        }
        let mut channels = None;
        // Chunks until "data"; at most a few dozen (a file of endless chunks is refused).
        for _ in 0..64 {
            let mut ch = [0u8; 8];
            reader.read_exact(&mut ch)?;
            let len = u32_at(&ch, 4) as u64;
            match &ch[..4] {
                b"fmt " => {
                    if !(16..=64).contains(&len) {
                        return Err(bad("odd fmt chunk"));
                    }
                    let mut f = vec![0u8; len as usize];
                    reader.read_exact(&mut f)?;
                    let (format, ch_count, rate, bits) =
                        (u16_at(&f, 0), u16_at(&f, 2), u32_at(&f, 4), u16_at(&f, 14));
                    if format != 1 || bits != 16 {
                        return Err(bad("only 16-bit PCM is played"));
                    }
                    if rate != SAMPLE_RATE {
                        return Err(WavError::Format(format!(
                            "{rate} Hz; calls play 48000 Hz files"
                        )));
                    }
                    if !(1..=2).contains(&ch_count) {
                        return Err(bad("only mono and stereo are played"));
                    }
                    channels = Some(ch_count);
                    if len % 2 == 1 {
                        reader.seek(SeekFrom::Current(1))?;
                    }
                }
                b"data" => {
                    let channels = channels.ok_or_else(|| bad("data before fmt"))?;
                    return Ok(WavSource {
                        reader,
                        channels,
                        left: len,
                    });
                }
                _ => {
                    reader.seek(SeekFrom::Current((len + (len & 1)) as i64))?;
                }
            }
        }
        Err(bad("no data chunk"))
    }
}

impl AudioSource for WavSource {
    fn frame(&mut self, out: &mut [i16; FRAME_SAMPLES]) {
        out.fill(0);
        let per = 2 * self.channels as usize;
        let want = (FRAME_SAMPLES * per).min(self.left as usize);
        let mut buf = vec![0u8; want];
        if want == 0 || self.reader.read_exact(&mut buf).is_err() {
            self.left = 0;
            return;
        }
        self.left -= want as u64;
        for (i, s) in buf.chunks_exact(per).enumerate() {
            let sum: i32 = s
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as i32)
                .sum();
            out[i] = (sum / self.channels as i32) as i16;
        }
    }
}

/// Records what the call hears into a mono WAV file. The header's lengths are written at
/// [`WavRecorder::finish`] (or drop); until then a reader sees a valid file with no length.
pub struct WavRecorder {
    writer: Option<BufWriter<File>>,
    samples: u64,
}

/// Longest recording: 6 hours (the file would pass the WAV format's 4 GiB otherwise).
const MAX_SAMPLES: u64 = 6 * 3600 * SAMPLE_RATE as u64;

impl WavRecorder {
    pub fn create(path: &Path) -> Result<WavRecorder, WavError> {
        let mut w = BufWriter::new(File::create(path)?);
        w.write_all(&header(0))?;
        Ok(WavRecorder {
            writer: Some(w),
            samples: 0,
        })
    }

    /// Writes the lengths and flushes; the file is complete.
    pub fn finish(&mut self) -> Result<(), WavError> {
        let Some(mut w) = self.writer.take() else {
            return Ok(());
        };
        w.flush()?;
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&header(self.samples))?;
        f.sync_all()?;
        Ok(())
    }
}

impl Drop for WavRecorder {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn header(samples: u64) -> [u8; 44] {
    let data = (samples * 2) as u32;
    let mut h = [0u8; 44];
    h[..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
    h[32..34].copy_from_slice(&2u16.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data.to_le_bytes());
    h
}

impl AudioSink for WavRecorder {
    fn frame(&mut self, samples: &[i16]) {
        let Some(w) = &mut self.writer else {
            return;
        };
        if self.samples + samples.len() as u64 > MAX_SAMPLES {
            return;
        }
        let mut bytes = Vec::with_capacity(samples.len() * 2);
        for s in samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        if w.write_all(&bytes).is_ok() {
            self.samples += samples.len() as u64;
        }
    }
}

/// Reads a mono 48 kHz WAV file's samples (for tests and tools; bounded by `max`).
pub fn read_samples(path: &Path, max: usize) -> Result<Vec<i16>, WavError> {
    let mut src = WavSource::open(path)?;
    let mut out = Vec::new();
    while src.left > 0 && out.len() < max {
        let mut f = [0i16; FRAME_SAMPLES];
        let before = src.left;
        src.frame(&mut f);
        let n = ((before - src.left) as usize / (2 * src.channels as usize)).min(FRAME_SAMPLES);
        out.extend_from_slice(&f[..n]);
    }
    Ok(out)
}

/// The energy of `samples` at `freq_hz` (Goertzel), relative to their total energy: near 1
/// for a pure tone at that frequency, near 0 for one elsewhere.
pub fn tone_share(samples: &[i16], freq_hz: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let n = samples.len() as f64;
    let w = std::f64::consts::TAU * freq_hz / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut total = 0.0f64;
    for x in samples {
        let x = f64::from(*x);
        total += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if total == 0.0 {
        return 0.0;
    }
    // A pure tone's Goertzel power is total × n / 2.
    (power / (total * n / 2.0)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::super::audio::Tone;
    use super::*;

    #[test]
    fn a_recorded_tone_reads_back_and_its_energy_sits_at_its_frequency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let mut rec = WavRecorder::create(&path).unwrap();
        let mut tone = Tone::new(440.0);
        for _ in 0..50 {
            let mut f = [0i16; FRAME_SAMPLES];
            tone.frame(&mut f);
            rec.frame(&f);
        }
        rec.finish().unwrap();
        let samples = read_samples(&path, usize::MAX).unwrap();
        assert_eq!(samples.len(), 50 * FRAME_SAMPLES);
        assert!(tone_share(&samples, 440.0) > 0.9);
        assert!(tone_share(&samples, 1000.0) < 0.01);
        // Played back as a source, the same samples come out, then silence.
        let mut src = WavSource::open(&path).unwrap();
        let mut f = [0i16; FRAME_SAMPLES];
        src.frame(&mut f);
        assert_eq!(&f[..], &samples[..FRAME_SAMPLES]);
        std::fs::write(dir.path().join("bad.wav"), b"RIFF....WAVEjunk").unwrap();
        assert!(WavSource::open(&dir.path().join("bad.wav")).is_err());
    }
}
