//! Ctrl-C (SIGINT) in the commands whose output is written when all the work is done: `eval`
//! and `interpolate` stop at their next step, say what they did, and exit with 130 (they died
//! silently of the signal before). Training and sampling are in tests/train_sample.rs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::train_tiny;

/// True once process `pid` catches SIGINT (bit 1 of SigCgt in /proc/PID/status): its handler
/// is in place, so a SIGINT now is handled rather than fatal.
fn catches_sigint(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (2 - 1)) != 0)
}

/// Run `ddpm args` in `dir`, SIGINT it as soon as it handles the signal, and return its exit
/// code, stdout and stderr.
fn interrupted(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("ddpm"))
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !catches_sigint(child.id()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended before it handled SIGINT"
        );
        assert!(Instant::now() < deadline, "{args:?} never handled SIGINT");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn eval_and_interpolate_stop_on_sigint_saying_so_with_exit_code_130() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 1, &[]);
    let ckpt = run_dir.join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    // Each would take minutes: all 1797 digits through both likelihoods, 100000 frames.
    let cases: [(&[&str], &str); 2] = [
        (
            &[
                "eval",
                "--checkpoint",
                ckpt,
                "--method",
                "both",
                "--per-timestep",
                "t.csv",
            ],
            "model evaluations; nothing written",
        ),
        (
            &[
                "interpolate",
                "--checkpoint",
                ckpt,
                "--seeds",
                "1,2",
                "--frames",
                "100000",
            ],
            "interrupted; nothing written",
        ),
    ];
    for (args, said) in cases {
        let mut args = args.to_vec();
        args.extend(["--device", "cpu", "--quiet"]);
        let (code, stdout, stderr) = interrupted(dir, &args);
        assert_eq!(code, Some(130), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
    assert!(!dir.join("t.csv").exists() && !dir.join("interpolation.png").exists());
}
