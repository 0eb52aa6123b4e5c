//! The live dashboard of `taxi-worker local` in a real browser: a paced run serves the page, a
//! headless Chromium (driven by `tests/browser/dashboard.mjs`) watches it draw, steps back through
//! the windows, checks the headline figures against the API and that the busiest Midtown cell lies
//! on the Manhattan the map draws, and Ctrl-C ends the worker cleanly.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use taxi_testkit::services::service_endpoint;

const BIN: &str = env!("CARGO_BIN_EXE_taxi-worker");
/// 100 000 trips over a day at the reference architecture's 6 480× pace: about 13 s of run, so the page still
/// opens mid-run when Chromium starts slowly beside the rest of the suite on a 2-core CI machine.
const RUN_ARGS: [&str; 7] = ["local", "--dashboard", "127.0.0.1:0", "--generate", "100000", "--speedup", "6480"];

/// The worker, its dashboard URL, and a thread collecting the rest of its stderr. The thread
/// also keeps the pipe drained, so the worker never blocks writing to it.
struct Dashboard {
    child: Child,
    url: String,
    stderr: JoinHandle<String>,
}

fn start_dashboard() -> Dashboard {
    let mut child = Command::new(BIN)
        .args(RUN_ARGS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start taxi-worker local");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let url = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            let _ = child.kill();
            panic!("taxi-worker exited before printing its dashboard address; stderr:\n{seen}");
        }
        if let Some(url) = line.trim_end().strip_prefix("dashboard: ") {
            break url.to_owned();
        }
        seen.push_str(&line);
    };
    let stderr = std::thread::spawn(move || {
        let mut rest = seen;
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    Dashboard { child, url, stderr }
}

/// `$TAXI_TEST_ARTIFACTS/dashboard.png`, by default under the workspace's target directory.
fn screenshot_path() -> PathBuf {
    let dir = std::env::var_os("TAXI_TEST_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").join("target/test-artifacts")
    });
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir.join("dashboard.png")
}

/// Waits for `child` to exit, or kills it after `timeout`.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait for taxi-worker") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[test]
fn the_dashboard_draws_a_live_run_and_ends_on_ctrl_c() {
    let (Some(playwright), Some(chromium)) =
        (service_endpoint("TAXI_TEST_PLAYWRIGHT"), service_endpoint("TAXI_TEST_CHROMIUM"))
    else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let screenshot = screenshot_path();
    let _ = std::fs::remove_file(&screenshot);

    let mut worker = start_dashboard();
    let started = Instant::now();
    let browser = Command::new("node")
        .arg(&script)
        .arg(&worker.url)
        .arg(&screenshot)
        .env("NODE_PATH", &playwright)
        .env("CHROMIUM", &chromium)
        .output();

    // Stop the worker whatever the browser said, so a failure leaves no process behind.
    let pid = worker.child.id().to_string();
    let interrupted = Command::new("kill").args(["-INT", &pid]).status().expect("kill");
    let status = wait_with_timeout(&mut worker.child, Duration::from_secs(15));
    let worker_stderr = worker.stderr.join().unwrap_or_default();

    let browser = browser.expect("run node (is Node.js installed?)");
    assert!(
        browser.status.success(),
        "the browser test failed ({}):\n{}{}\n--- taxi-worker stderr ---\n{worker_stderr}",
        browser.status,
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr),
    );
    eprintln!("{}in {:.1?}", String::from_utf8_lossy(&browser.stdout), started.elapsed());
    assert!(screenshot.is_file(), "no screenshot at {}", screenshot.display());

    assert!(interrupted.success(), "kill -INT {pid}");
    let status = status.unwrap_or_else(|| panic!("taxi-worker ignored Ctrl-C for 15 s; stderr:\n{worker_stderr}"));
    assert!(status.success(), "taxi-worker exited with {status} after Ctrl-C; stderr:\n{worker_stderr}");
}
