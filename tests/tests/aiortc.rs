//! Hestia's call machine against a WebRTC implementation nobody here wrote: aiortc (PyPI,
//! pinned in tests/python/requirements.txt) answers a call from Hestia's str0m peer, the SDP
//! and candidates passed between them by tests/python/aiortc_peer.py, and each side records
//! the other's tone. Both run in a network namespace of their own with only loopback up, so
//! nothing leaves the machine whatever aiortc would gather.

use hestia_node::client::call::wav::{read_samples, tone_share};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn share_after_the_first_second(path: &Path, hz: f64) -> f64 {
    let samples = read_samples(path, 48_000 * 30).unwrap();
    assert!(
        samples.len() > 48_000 * 2,
        "{} samples in {}",
        samples.len(),
        path.display()
    );
    tone_share(&samples[48_000..], hz)
}

#[test]
fn aiortc_answers_a_hestia_call_and_each_side_hears_the_others_tone() {
    let peer = hestia_tests::built_bin("hestia-tests", "call-peer");
    let python = std::env::var("HESTIA_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/aiortc_peer.py");
    let dir = tempfile::tempdir().unwrap();
    let (heard_by_aiortc, heard_by_hestia) =
        (dir.path().join("aiortc.wav"), dir.path().join("hestia.wav"));
    let mut child = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(&python)
        .arg(&script)
        .arg(&peer)
        .args(["1000", heard_by_aiortc.to_str().unwrap()])
        .args(["440", heard_by_hestia.to_str().unwrap(), "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running unshare and {python} (run scripts/setup.sh): {e}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the interop call did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(said.lines().last().unwrap()).unwrap();
    assert!(result["talked_ms"].as_u64().unwrap() >= 3_000, "{result}");
    assert!(
        share_after_the_first_second(&heard_by_aiortc, 440.0) > 0.5,
        "aiortc heard 440 Hz"
    );
    assert!(
        share_after_the_first_second(&heard_by_hestia, 1000.0) > 0.5,
        "Hestia heard 1000 Hz"
    );
    assert!(share_after_the_first_second(&heard_by_hestia, 440.0) < 0.05);
}
