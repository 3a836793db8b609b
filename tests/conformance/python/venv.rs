//! The pinned Python SDKs in a venv, shared by the tests that drive them (`node/tests/mock_llm_sdk.rs`
//! and `tests/tests/conformance.rs` include this file with `#[path]`; neither crate depends on the
//! other). The venv lives in the test's `CARGO_TARGET_TMPDIR` and is rebuilt when
//! `requirements.txt` changes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// FNV-1a of the requirements: the venv is rebuilt when they change.
fn fingerprint(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The venv's python under `tmp`, creating the venv and installing the SDKs pinned in
/// `<repo>/tests/conformance/python/requirements.txt` when needed.
pub fn python_with_sdks(repo: &Path, tmp: &Path) -> PathBuf {
    let requirements = repo.join("tests/conformance/python/requirements.txt");
    let pins = std::fs::read(&requirements).expect("requirements.txt is readable");
    let venv = tmp.join(format!("py-sdk-{}", fingerprint(&pins)));
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv), "python3 -m venv");
        run(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements),
            "pip install -r tests/conformance/python/requirements.txt",
        );
        std::fs::write(&marker, &pins).expect("venv marker is writable");
    }
    python
}
