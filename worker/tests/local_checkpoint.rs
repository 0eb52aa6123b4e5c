//! Checkpoints of `taxi-worker local`: stopping (on a record limit, Ctrl-C or `kill -9`) and
//! resuming gives exactly the results of an uninterrupted run; neither does a stalled input change them.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{local_options, run_local_blocking};
use taxi_core::config::EngineConfig;
use taxi_core::generate::GeneratorConfig;
use taxi_testkit::input::write_generated;
use taxi_testkit::oracle::as_lines;
use taxi_worker::local::{CheckpointOptions, LocalOptions, Outcome};

const BIN: &str = env!("CARGO_BIN_EXE_taxi-worker");

fn generated_file(dir: &Path, trips: u64) -> PathBuf {
    let path = dir.join("trips.jsonl");
    let config = GeneratorConfig {
        trips,
        seed: 3,
        watermark_every: Some(500),
        invalid_ratio: 0.001,
        ..GeneratorConfig::default()
    };
    write_generated(&path, &config);
    path
}

fn options(input: &Path, checkpoint: Option<CheckpointOptions>, stop_after: Option<u64>) -> LocalOptions {
    LocalOptions { checkpoint, stop_after_records: stop_after, ..local_options(input, 4, EngineConfig::default()) }
}

fn checkpoints(dir: &Path, resume: bool) -> Option<CheckpointOptions> {
    Some(CheckpointOptions { dir: dir.to_path_buf(), interval: Duration::from_secs(3600), resume })
}

#[test]
fn stopping_after_k_records_and_resuming_gives_the_uninterrupted_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 40_000);
    let full = run_local_blocking(options(&input, None, None)).expect("uninterrupted run");
    // Inside the first chunk, mid-file across a chunk boundary, and near the end.
    for k in [1, 17_321, 39_990] {
        let ckpt = dir.path().join(format!("ckpt-{k}"));
        let first = run_local_blocking(options(&input, checkpoints(&ckpt, false), Some(k))).expect("first part");
        assert_eq!(first.outcome, Outcome::Stopped { records: k });
        assert!(ckpt.join("LATEST").exists(), "a checkpoint was written");
        let shard_object = ckpt.join("checkpoint-00000001/shardId-000000000003.json");
        assert!(shard_object.exists(), "one object per shard");
        let rest = run_local_blocking(options(&input, checkpoints(&ckpt, true), None)).expect("resumed run");
        assert_eq!(rest.outcome, Outcome::Completed);
        assert_eq!(as_lines(&rest.results), as_lines(&full.results), "stopped at {k}");
        let (a, b) = (&rest.summary, &full.summary);
        assert_eq!(
            (a.records, a.trips, a.watermarks, a.invalid, a.outside_region, a.late),
            (b.records, b.trips, b.watermarks, b.invalid, b.outside_region, b.late),
            "stopped at {k}"
        );
    }
}

#[test]
fn a_resume_can_be_stopped_and_resumed_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 30_000);
    let full = run_local_blocking(options(&input, None, None)).expect("uninterrupted run");
    let ckpt = dir.path().join("ckpt");
    run_local_blocking(options(&input, checkpoints(&ckpt, false), Some(9_000))).expect("first part");
    let second = run_local_blocking(options(&input, checkpoints(&ckpt, true), Some(21_000))).expect("second part");
    assert_eq!(second.outcome, Outcome::Stopped { records: 21_000 });
    let last = run_local_blocking(options(&input, checkpoints(&ckpt, true), None)).expect("last part");
    assert_eq!(as_lines(&last.results), as_lines(&full.results));
}

#[test]
fn resume_refuses_a_checkpoint_of_another_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 5_000);
    let ckpt = dir.path().join("ckpt");
    let empty = run_local_blocking(options(&input, checkpoints(&ckpt, true), None)).expect_err("nothing to resume");
    assert!(empty.to_string().contains("holds no checkpoint"), "{empty}");
    run_local_blocking(options(&input, checkpoints(&ckpt, false), Some(100))).expect("first part");
    let mut other_shards = options(&input, checkpoints(&ckpt, true), None);
    other_shards.shards = 8;
    let err = run_local_blocking(other_shards).expect_err("different shard count");
    assert!(err.to_string().contains("4 shards, not 8"), "{err}");
    let mut other_config = options(&input, checkpoints(&ckpt, true), None);
    other_config.engine.hot_spots.min_pickups = 5;
    let err = run_local_blocking(other_config).expect_err("different settings");
    assert!(err.to_string().contains("different analysis"), "{err}");
}

fn local_command(input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["local", "--shards", "4", "--input"]).arg(input).arg("--output").arg(output).args(extra);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Starts a run with frequent checkpoints, waits for `checkpoints` of them, then sends `signal`.
fn interrupt_after_checkpoints(input: &Path, ckpt: &Path, signal: &str, checkpoints: u64) -> std::process::Output {
    let out = ckpt.with_extension("partial.jsonl");
    let ckpt_arg = ckpt.to_str().expect("utf-8 path");
    let child = local_command(input, &out, &["--checkpoint-dir", ckpt_arg, "--checkpoint-interval", "20ms"])
        .spawn()
        .expect("start taxi-worker");
    let deadline = Instant::now() + Duration::from_secs(60);
    let latest = ckpt.join("LATEST");
    loop {
        let seen = std::fs::read_to_string(&latest).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        if seen >= checkpoints {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    child.wait_with_output().expect("wait")
}

/// Resumes from `ckpt` to the end and asserts the output file equals an uninterrupted run's.
fn assert_resume_gives_the_uninterrupted_output(dir: &Path, input: &Path, ckpt: &Path) {
    let expected_path = dir.join("expected.jsonl");
    let uninterrupted = local_command(input, &expected_path, &[]).status().expect("run");
    assert!(uninterrupted.success());
    let resumed_path = dir.join("resumed.jsonl");
    let ckpt_arg = ckpt.to_str().expect("utf-8 path");
    let resumed =
        local_command(input, &resumed_path, &["--checkpoint-dir", ckpt_arg, "--resume"]).output().expect("resume");
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    let expected = std::fs::read(&expected_path).expect("expected output");
    assert!(!expected.is_empty());
    let actual = std::fs::read(&resumed_path).expect("resumed output");
    assert!(actual == expected, "resumed output differs");
}

#[test]
fn kill_9_mid_run_then_resume_gives_the_uninterrupted_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 250_000);
    let ckpt = dir.path().join("ckpt");
    let killed = interrupt_after_checkpoints(&input, &ckpt, "-9", 2);
    assert!(!killed.status.success(), "the run was killed before it finished");
    assert_resume_gives_the_uninterrupted_output(dir.path(), &input, &ckpt);
}

#[test]
fn ctrl_c_checkpoints_and_exits_then_resume_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 250_000);
    let ckpt = dir.path().join("ckpt");
    let interrupted = interrupt_after_checkpoints(&input, &ckpt, "-INT", 1);
    let stderr = String::from_utf8_lossy(&interrupted.stderr);
    assert!(interrupted.status.success(), "Ctrl-C is a clean stop: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_resume_gives_the_uninterrupted_output(dir.path(), &input, &ckpt);
}

/// Local mode decides idleness by the input's progress: a pipe that stalls for longer than the idle
/// timeout changes no result. (Timed by the wall clock, every shard went idle during the pause, the
/// merge closed the open windows, and the trips after the pause arrived late.)
#[test]
fn a_stalled_input_pipe_changes_no_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 20_000);
    let expected_path = dir.path().join("expected.jsonl");
    let status = local_command(&input, &expected_path, &["--idle-timeout", "1s"]).status().expect("run");
    assert!(status.success());

    let fifo = dir.path().join("trips.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let stalled_path = dir.path().join("stalled.jsonl");
    let child = local_command(&fifo, &stalled_path, &["--idle-timeout", "1s"]).spawn().expect("start taxi-worker");
    let bytes = std::fs::read(&input).expect("input");
    let half = bytes[..bytes.len() / 2].iter().rposition(|b| *b == b'\n').expect("a line end") + 1;
    let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).expect("open the pipe");
    pipe.write_all(&bytes[..half]).expect("first half");
    pipe.flush().expect("flush");
    std::thread::sleep(Duration::from_secs(3));
    pipe.write_all(&bytes[half..]).expect("second half");
    drop(pipe);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = std::fs::read(&expected_path).expect("expected output");
    assert!(!expected.is_empty());
    assert!(std::fs::read(&stalled_path).expect("stalled output") == expected, "the stall changed the results");
}
