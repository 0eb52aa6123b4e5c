//! `taxi-worker run` as a child process: started with the emulators in its environment, its HTTP
//! address read from its first stderr line, its endpoints queried, signalled, and waited for with
//! the rest of its stderr kept for failure messages; and the assignment file it follows. The
//! binary's path comes from the caller (`env!("CARGO_BIN_EXE_taxi-worker")` in the worker's tests).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use taxi_core::assignment::Assignment;

use crate::services::Services;

/// `bin` with the emulators' static credentials and region in its environment (any credentials
/// are accepted there; without them the AWS SDK would look for real ones).
pub fn command(bin: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("AWS_ACCESS_KEY_ID", "test").env("AWS_SECRET_ACCESS_KEY", "test").env("AWS_REGION", "us-east-1");
    cmd
}

/// [`command`] pointed at the Kinesis and S3 emulators (OpenSearch is a flag of each command).
pub fn emulator_command(bin: impl AsRef<OsStr>, services: &Services) -> Command {
    let mut cmd = command(bin);
    cmd.env("TAXI_KINESIS_ENDPOINT_URL", &services.kinesis);
    cmd.env("TAXI_S3_ENDPOINT_URL", &services.s3).env("TAXI_S3_FORCE_PATH_STYLE", "true");
    cmd
}

/// Writes the assignment file workers follow with `--assignment file:PATH`, atomically (written
/// beside it, then renamed), so a worker never reads half of it.
pub fn publish_assignment(path: &Path, assignment: &Assignment) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, assignment.to_json()).expect("write the assignment");
    std::fs::rename(&tmp, path).expect("publish the assignment");
}

/// A `GET` of `path` on `addr` (`host:port`): the status and the body; status 0 when nothing
/// answers.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// A started worker process. Killed when dropped, so a failing test leaves none behind.
pub struct WorkerProcess {
    /// The process.
    pub child: Child,
    /// `host:port` of its `/healthz`, `/readyz`, `/metrics` and `/status`.
    pub addr: String,
    /// Collects everything it writes to stderr after the first line, until it exits.
    stderr: Option<JoinHandle<String>>,
    /// How failure messages name it.
    name: String,
}

impl WorkerProcess {
    /// Spawns `cmd` (a `taxi-worker run …` command) and waits for the address it prints first.
    pub fn spawn(mut cmd: Command) -> WorkerProcess {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("start taxi-worker run");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut first = String::new();
        stderr.read_line(&mut first).expect("first stderr line");
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("the worker prints its address first, got {first:?}"))
            .to_owned();
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            rest
        });
        WorkerProcess { child, addr, stderr: Some(stderr), name: "the worker".to_owned() }
    }

    /// Names the worker in failure messages (e.g. `worker 2`).
    pub fn named(mut self, name: impl Into<String>) -> WorkerProcess {
        self.name = name.into();
        self
    }

    /// A `GET` of one of its endpoints: status and body (status 0 when it does not answer).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    /// Its `/status` document (`Null` when it does not answer).
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status").1).unwrap_or_default()
    }

    /// The sum of the `/metrics` samples whose line starts with `name_and_labels`, e.g.
    /// `taxi_checkpoint_failures_total{reason="io"}` (0 when there are none).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        self.get("/metrics")
            .1
            .lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends a signal with `kill` (`-STOP`, `-CONT`, `-TERM`…).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {signal}");
    }

    /// Kills it at once, as a crashed pod ends.
    pub fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for it to exit by itself and asserts it succeeded; returns what it
    /// wrote to stderr. `what` says what it was expected to do (e.g. "stop when idle").
    pub fn wait_for_exit(&mut self, timeout: Duration, what: &str) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
                assert!(status.success(), "{} failed: {stderr}", self.name);
                return stderr;
            }
            assert!(Instant::now() < deadline, "{} did not {what}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WorkerProcess {
    /// A failing test must not leave workers behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
