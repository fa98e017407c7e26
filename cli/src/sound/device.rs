//! cpal streams behind [`AudioSource`] and [`AudioSink`]: [`Mic`] and [`Speaker`].
//!
//! A cpal stream may not leave the thread that built it, and a call's source and sink must be
//! `Send`; so each stream lives on a thread of its own, which builds it, reports whether that
//! worked, and keeps it playing until the handle is dropped. The card's callback and the call
//! meet only in a shared [`Ring`].

use super::{CALL_RATE, Resampler, Ring, to_pcm};
use anyhow::{Context, Result, anyhow};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{
    Device, DeviceId, FromSample, Sample, SampleFormat, SizedSample, StreamConfig,
    SupportedStreamConfig,
};
use hestia_node::client::call::audio::{AudioSink, AudioSource, FRAME_SAMPLES};
use std::sync::{Arc, Mutex, mpsc};

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Input,
    Output,
}

/// The device named `name` (an ALSA name such as `default`, `null` or `hw:CARD=0,DEV=0`), or
/// the host's default; an error that lists the devices there are.
fn find(name: Option<&str>, dir: Direction) -> Result<Device> {
    let host = cpal::default_host();
    let found = match name {
        None | Some("") => match dir {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        },
        Some(n) => host.device_by_id(&DeviceId::new(host.id(), n)),
    };
    found.ok_or_else(|| {
        let names: Vec<String> = host
            .devices()
            .map(|ds| {
                ds.filter_map(|d| d.id().ok())
                    .map(|id| id.id().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let what = match dir {
            Direction::Input => "microphone",
            Direction::Output => "speaker",
        };
        anyhow!(
            "no {what} named {:?}; devices here: {}",
            name.unwrap_or("default"),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    })
}

/// 48 kHz if the device offers it (no resampling), else its own default; mono or stereo.
fn choose(device: &Device, dir: Direction) -> Result<SupportedStreamConfig> {
    let ranges: Vec<_> = match dir {
        Direction::Input => device.supported_input_configs()?.collect(),
        Direction::Output => device.supported_output_configs()?.collect(),
    };
    let usable = |f: SampleFormat| matches!(f, SampleFormat::I16 | SampleFormat::F32);
    let exact = ranges
        .into_iter()
        .filter(|r| usable(r.sample_format()) && r.channels() <= 2)
        .find_map(|r| r.try_with_sample_rate(CALL_RATE));
    match exact {
        Some(c) => Ok(c),
        None => Ok(match dir {
            Direction::Input => device.default_input_config()?,
            Direction::Output => device.default_output_config()?,
        }),
    }
}

/// Keeps a stream playing on its own thread until dropped.
struct Running {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Build = Box<dyn FnOnce(&Device, StreamConfig, SampleFormat) -> Result<cpal::Stream> + Send>;

/// Opens the device on a thread of its own, builds the stream with `build` and plays it; the
/// device's name and its rate once it runs.
fn run(name: Option<String>, dir: Direction, build: impl FnOnce(u32) -> Build) -> Result<Running> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let (stop, stopped) = mpsc::channel::<()>();
    let (rate_tx, rate_rx) = mpsc::channel::<u32>();
    let (build_tx, build_rx) = mpsc::channel::<Build>();
    let thread = std::thread::Builder::new()
        .name("sound".into())
        .spawn(move || {
            // alsa-lib's messages on this thread go to a buffer, not the terminal.
            #[cfg(target_os = "linux")]
            let _quiet = alsa::Output::local_error_handler().ok();
            let opened = (|| -> Result<cpal::Stream> {
                let device = find(name.as_deref(), dir)?;
                let config = choose(&device, dir)?;
                let _ = rate_tx.send(config.sample_rate());
                let build = build_rx.recv().context("the call went away")?;
                let stream = build(&device, config.config(), config.sample_format())?;
                stream.play()?;
                Ok(stream)
            })();
            match opened {
                Ok(stream) => {
                    let _ = ready_tx.send(Ok(()));
                    // Until the handle drops its sender.
                    let _ = stopped.recv();
                    drop(stream);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    let running = Running {
        stop: Some(stop),
        thread: Some(thread),
    };
    if let Ok(rate) = rate_rx.recv() {
        let _ = build_tx.send(build(rate));
    }
    ready_rx.recv().context("the sound thread ended")??;
    Ok(running)
}

fn stream_error(e: cpal::Error) {
    tracing::debug!(error = %e, "sound card");
}

/// The microphone as a call's voice.
pub struct Mic {
    ring: Arc<Mutex<Ring<i16>>>,
    _running: Running,
}

impl Mic {
    /// Opens the input device `name` (or the default one) and starts listening.
    pub fn open(name: Option<&str>) -> Result<Mic> {
        let ring = Arc::new(Mutex::new(Ring::for_rate(CALL_RATE)));
        let r = ring.clone();
        let running = run(name.map(str::to_string), Direction::Input, move |rate| {
            Box::new(move |device: &Device, config: StreamConfig, format| {
                let channels = usize::from(config.channels.max(1));
                let resampler = Resampler::new(rate, CALL_RATE);
                Ok(match format {
                    SampleFormat::I16 => listen::<i16>(device, config, channels, resampler, r)?,
                    SampleFormat::F32 => listen::<f32>(device, config, channels, resampler, r)?,
                    other => return Err(anyhow!("the microphone offers {other} samples only")),
                })
            })
        })
        .map_err(|e| anyhow!("--audio mic: {e:#}"))?;
        Ok(Mic {
            ring,
            _running: running,
        })
    }
}

fn listen<T>(
    device: &Device,
    config: StreamConfig,
    channels: usize,
    mut resampler: Resampler,
    ring: Arc<Mutex<Ring<i16>>>,
) -> Result<cpal::Stream>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let stream = device.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _| {
            let Ok(mut ring) = ring.lock() else { return };
            for frame in data.chunks(channels) {
                let mono =
                    frame.iter().map(|s| f32::from_sample(*s)).sum::<f32>() / channels as f32;
                resampler.push(mono, |s| ring.push(to_pcm(s)));
            }
        },
        stream_error,
        None,
    )?;
    Ok(stream)
}

impl AudioSource for Mic {
    fn frame(&mut self, out: &mut [i16; FRAME_SAMPLES]) {
        match self.ring.lock() {
            Ok(mut r) => r.fill(out),
            Err(_) => out.fill(0),
        }
    }
}

/// The speaker as a call's ear.
pub struct Speaker {
    ring: Arc<Mutex<Ring<f32>>>,
    resampler: Resampler,
    _running: Running,
}

impl Speaker {
    /// Opens the output device `name` (or the default one) and starts playing (silence until
    /// the call's first frame).
    pub fn open(name: Option<&str>) -> Result<Speaker> {
        let (rate_tx, rate_rx) = mpsc::channel();
        let ring: Arc<Mutex<Ring<f32>>> = Arc::new(Mutex::new(Ring::for_rate(CALL_RATE)));
        let r = ring.clone();
        let running = run(name.map(str::to_string), Direction::Output, move |rate| {
            let _ = rate_tx.send(rate);
            if let Ok(mut ring) = r.lock() {
                *ring = Ring::for_rate(rate);
            }
            Box::new(move |device: &Device, config: StreamConfig, format| {
                let channels = usize::from(config.channels.max(1));
                Ok(match format {
                    SampleFormat::I16 => play::<i16>(device, config, channels, r)?,
                    SampleFormat::F32 => play::<f32>(device, config, channels, r)?,
                    other => return Err(anyhow!("the speaker takes {other} samples only")),
                })
            })
        })
        .map_err(|e| anyhow!("--speaker: {e:#}"))?;
        let rate = rate_rx.recv().unwrap_or(CALL_RATE);
        Ok(Speaker {
            ring,
            resampler: Resampler::new(CALL_RATE, rate),
            _running: running,
        })
    }
}

fn play<T>(
    device: &Device,
    config: StreamConfig,
    channels: usize,
    ring: Arc<Mutex<Ring<f32>>>,
) -> Result<cpal::Stream>
where
    T: SizedSample + FromSample<f32>,
{
    let mut mono = Vec::new();
    let stream = device.build_output_stream::<T, _, _>(
        config,
        move |data: &mut [T], _| {
            mono.resize(data.len() / channels, 0.0);
            match ring.lock() {
                Ok(mut r) => r.fill(&mut mono),
                Err(_) => mono.fill(0.0),
            }
            for (frame, s) in data.chunks_mut(channels).zip(&mono) {
                frame.fill(T::from_sample(*s));
            }
        },
        stream_error,
        None,
    )?;
    Ok(stream)
}

impl AudioSink for Speaker {
    fn frame(&mut self, samples: &[i16]) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        for s in samples {
            self.resampler.push(s.to_sample::<f32>(), |o| ring.push(o));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ALSA's `null` device (in every alsa-lib, no card needed) takes a stream both ways: the
    /// microphone gives silence at the call's pace and the speaker swallows frames.
    #[test]
    fn the_null_device_opens_both_ways() {
        let mut mic = Mic::open(Some("null")).expect("opening null for capture");
        let mut speaker = Speaker::open(Some("null")).expect("opening null for playback");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut frame = [1i16; FRAME_SAMPLES];
        mic.frame(&mut frame);
        assert!(frame.iter().all(|s| *s == 0), "null captures silence");
        for _ in 0..10 {
            speaker.frame(&frame);
        }
        drop((mic, speaker));
    }

    #[test]
    fn an_unknown_device_is_a_clear_error_naming_the_devices() {
        let e = Mic::open(Some("no-such-card"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("no microphone named \"no-such-card\""), "{e}");
        assert!(e.contains("null"), "{e}");
    }
}
