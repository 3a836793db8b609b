//! Runs the Node conformance harness (OpenClaw's reference client plus schema validation of
//! every server frame) against this gateway over the fake service.
//!
//! Needs npm (to install the pinned client, schema and Node 24 on first use); without npm the
//! test says so and does nothing. `BEAMCLAW_CONFORMANCE=require` makes a missing npm a failure.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use support::*;

/// The harness installs its packages on first use; that and the run stay under this.
const HARNESS_TIMEOUT: Duration = Duration::from_secs(600);

fn npm_available() -> bool {
    std::process::Command::new("npm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_client_conforms() {
    if !npm_available() {
        assert_ne!(
            std::env::var("BEAMCLAW_CONFORMANCE").as_deref(),
            Ok("require"),
            "BEAMCLAW_CONFORMANCE=require but npm is not on PATH"
        );
        eprintln!("skipping the Node conformance harness: npm is not on PATH");
        return;
    }
    // Once with loopback auto-approval, once with pairing approved through device.pair.approve.
    for auto_approve in [true, false] {
        let mut cfg = config();
        cfg.pairing.auto_approve_loopback = auto_approve;
        let gw = start(cfg).await;
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/node/run.sh");
        let run = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(gw.ws_url())
            .arg(TOKEN)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(HARNESS_TIMEOUT, run)
            .await
            .expect("the conformance harness finished in time")
            .expect("the conformance harness started");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("auto-approve {auto_approve}:\n{stdout}");
        assert!(output.status.success(), "conformance failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains(" 0 failed"), "{stdout}");
        if !auto_approve {
            assert!(
                stdout.contains("approved with device.pair.approve")
                    || stdout.contains(" 0 failed")
            );
        }
        gw.stop().await;
    }
}
