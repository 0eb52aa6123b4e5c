//! `taxi-worker run` as a child process: started, its HTTP address read from its first stderr
//! line, the rest of its stderr collected for failure messages.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

/// A started worker process.
pub struct WorkerProcess {
    /// The process.
    pub child: Child,
    /// `host:port` of its `/healthz`, `/readyz`, `/metrics` and `/status`.
    pub addr: String,
    /// Everything it writes to stderr after the first line, once it exits.
    pub stderr: JoinHandle<String>,
}

/// Spawns `cmd` (a `taxi-worker run …` command) and waits for the address it prints first.
pub fn spawn_worker(mut cmd: Command) -> WorkerProcess {
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
    WorkerProcess { child, addr, stderr }
}
