//! Headless Chromium for the tests that need a real browser (the admin page, the cross-origin
//! page): the binary, and one run of it on a URL with a fresh profile. `scripts/test` installs
//! Debian's `chromium` package; a run without it says how to install it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// Debian's Chromium; the test stops with the command that installs it when it is missing.
pub fn binary() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs it (as root: apt-get install -y chromium)",
        path.display()
    );
    path
}

/// Runs headless Chromium on `url` with `args` (e.g. `--dump-dom`, `--screenshot=…`) and a fresh
/// profile, within 120 s; returns its standard output.
pub async fn run(url: &str, args: &[String]) -> String {
    let profile =
        std::env::temp_dir().join(format!("exai-chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&profile).expect("a profile directory");
    let mut cmd = tokio::process::Command::new(binary());
    // The flags a closed network needs: no background connections, no first-run work.
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium finishes within 120 s")
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
