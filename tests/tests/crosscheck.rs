//! Hestia's X3DH and Double Ratchet against implementations nobody here wrote: the PyPI
//! packages `x3dh` and `doubleratchet` (with pynacl), configured with Hestia's parameters, in
//! both directions. The Python side is tests/python/crosscheck.py; scripts/setup.sh installs its
//! pinned packages into a virtualenv and scripts/env.sh names its interpreter in HESTIA_PYTHON.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn sessions_interoperate_with_python_x3dh_and_doubleratchet() {
    let peer = hestia_tests::built_bin("hestia-tests", "xcheck-peer");
    let python = std::env::var("HESTIA_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/crosscheck.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&peer)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {python} (run scripts/setup.sh): {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("waiting for python").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cross-check did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("cross-check output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cross-check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("agree with Hestia in both directions"),
        "{stdout}"
    );
}
