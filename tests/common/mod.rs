//! Helpers for driving the real `ddpm` binary from a temp dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The repo's configs folder.
pub fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name)
}

/// `ddpm` with `args`, quiet stderr progress, run in `dir`.
pub fn ddpm(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("ddpm").expect("the ddpm binary is built by cargo test");
    cmd.current_dir(dir).args(args);
    cmd
}

/// Run and assert exit code `code`; return (stdout, stderr). A panic is never acceptable.
pub fn run(dir: &Path, args: &[&str], code: i32) -> (Vec<u8>, String) {
    let out = ddpm(dir, args).output().expect("ddpm runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "ddpm {args:?} panicked:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "ddpm {args:?} exited {:?}, expected {code}\nstderr:\n{stderr}",
        out.status.code()
    );
    (out.stdout, stderr)
}

/// The arguments that train the tiny config into `run_dir` for `steps` steps on the CPU,
/// quietly, followed by `extra`.
pub fn tiny_train_args(run_dir: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let tiny = config("tiny.toml");
    let mut args: Vec<String> = [
        "train",
        "--config",
        tiny.to_str().unwrap(),
        "--out",
        run_dir.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-steps",
        &steps.to_string(),
        "--quiet",
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Train the tiny config into `dir/run` for `steps` steps (plus extra args); returns the run dir.
pub fn train_tiny(dir: &Path, run_name: &str, steps: u64, extra: &[&str]) -> PathBuf {
    let run_dir = dir.join(run_name);
    let args = tiny_train_args(&run_dir, steps, extra);
    run(dir, &args.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    run_dir
}

/// The JSON summary that `--json` prints as the last line of stdout.
pub fn json_summary(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("no JSON summary ({e}) in {text:?}"))
}
