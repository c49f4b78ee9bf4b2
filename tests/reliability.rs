//! Nothing lost: a training killed at any point (at every step of the save sequence in turn, and
//! by `kill -9` at random times) resumes from its newest complete checkpoint and ends
//! bit-identical to a run that was never interrupted; two trainings on one run directory never
//! both run. (Output paths: tests/output_paths.rs.)

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use common::{config, run};
use ddpm::checkpoint::run_dir::{ckpt_name, parse_ckpt_name, LATEST};

/// A checkpoint every step, and only the newest kept: every step saves, and every save after
/// the first prunes, so a crash can land in each part of the sequence.
const EVERY_STEP: [&str; 4] = [
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "train.keep_checkpoints=1",
];

/// `ddpm train` of the tiny config into `run` for `steps` steps in total, with `EVERY_STEP`.
fn train(dir: &Path, run: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("ddpm"));
    cmd.current_dir(dir)
        .args(["train", "--config"])
        .arg(config("tiny.toml"))
        .arg("--out")
        .arg(run)
        .args(["--device", "cpu", "--max-steps", &steps.to_string()])
        .args(EVERY_STEP)
        .args(extra)
        .stdin(Stdio::null());
    cmd
}

fn stderr_of(out: &Output) -> String {
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!e.contains("panicked"), "{e}");
    e
}

/// `latest.safetensors` of a run trained straight through to `steps`: what every interrupted
/// run must end with, byte for byte.
fn reference(dir: &Path, steps: u64) -> Vec<u8> {
    let run = dir.join(format!("reference-{steps}"));
    let out = train(dir, &run, steps, &["--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    fs::read(run.join(LATEST)).unwrap()
}

/// The newest `ckpt-*` step in `run`. Every such file is complete: it appears by rename.
fn newest_on_disk(run: &Path) -> Option<u64> {
    let entries = fs::read_dir(run).ok()?;
    entries
        .filter_map(|e| parse_ckpt_name(e.unwrap().file_name().to_str()?))
        .max()
}

/// Temp files left in `run` or its samples/ folder.
fn temp_files(run: &Path) -> Vec<PathBuf> {
    [run.to_path_buf(), run.join("samples")]
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

/// What a user does after a crash: `--resume` when the run has a checkpoint (it must continue
/// from the newest one and pass over none), a fresh start when it has none. Runs to `steps`
/// and checks the run ends as `expected` with no temp files left.
fn recover(dir: &Path, run: &Path, steps: u64, expected: &[u8], what: &str) {
    let newest = newest_on_disk(run);
    assert!(
        newest.is_some() || !run.join(LATEST).exists(),
        "{what}: `latest` without a ckpt-* file"
    );
    let extra: &[&str] = if newest.is_some() { &["--resume"] } else { &[] };
    let out = train(dir, run, steps, extra).output().unwrap();
    let e = stderr_of(&out);
    assert!(out.status.success(), "{what}: recovery failed:\n{e}");
    if let Some(s) = newest {
        let from = format!(
            "ddpm: resuming from {} (step {s})",
            run.join(ckpt_name(s)).display()
        );
        assert!(e.contains(&from), "{what}: expected `{from}` in\n{e}");
        assert!(!e.contains("passed over"), "{what}: {e}");
    }
    assert!(
        fs::read(run.join(LATEST)).unwrap() == expected,
        "{what}: the recovered run differs from one trained straight through"
    );
    assert_eq!(temp_files(run), Vec::<PathBuf>::new(), "{what}");
}

/// Kill the training at each crash point in turn (`ddpm::fault`: config.toml, metrics.csv,
/// then for each of two saves the temp file created, half written, written, synced, renamed,
/// `latest` linked under a temp name and renamed, the old checkpoint pruned), then recover.
#[test]
fn a_crash_at_any_step_of_a_save_is_recovered_from() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: crash points exist in debug builds only");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let expected = reference(dir, 2);
    for k in 1u32.. {
        let run = dir.join(format!("crash-{k}"));
        let out = train(dir, &run, 2, &["--quiet"])
            .env(ddpm::fault::CRASH_AT_ENV, k.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            // Past the last point: the run finished. Two saves alone pass 14 points.
            assert!(k > 14, "only {} crash points were passed", k - 1);
            assert!(fs::read(run.join(LATEST)).unwrap() == expected);
            break;
        }
        assert_eq!(
            out.status.signal(),
            Some(9),
            "crash point {k}: {}",
            stderr_of(&out)
        );
        recover(dir, &run, 2, &expected, &format!("crash point {k}"));
    }
}

/// `kill -9` at seeded random times during a training that saves every step, each followed by
/// `--resume` (itself killed in turn); the last resume finishes the run, bit-identical to one
/// never interrupted. Each kill comes after a random number (0 to 2) of this process's
/// checkpoints plus a random 0-20 ms, so it lands in startup, in a step or in a save whatever
/// the machine's speed, and each round moves the run on by a few steps at most.
#[test]
fn kill_9_at_random_times_always_resumes_from_a_complete_checkpoint() {
    const STEPS: u64 = 20;
    const ROUNDS: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let expected = reference(dir, STEPS);
    let run = dir.join("run");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let mut killed = 0;
    for round in 0..ROUNDS {
        let newest = newest_on_disk(&run);
        let extra: &[&str] = if newest.is_some() { &["--resume"] } else { &[] };
        let mut child = train(dir, &run, STEPS, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen: Vec<String> = Vec::new();
        let saves = rng.random_range(0..3);
        while seen.iter().filter(|l| l.starts_with("checkpoint ")).count() < saves {
            match lines.next() {
                Some(l) => seen.push(l.unwrap()),
                None => break,
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..20)));
        // An error here means it had already exited; its status says how.
        let _ = child.kill();
        seen.extend(lines.map_while(|l| l.ok()));
        let status = child.wait().unwrap();
        let e = seen.join("\n");
        assert!(!e.contains("panicked"), "{e}");
        assert!(
            status.success() || status.signal() == Some(9),
            "round {round}: {status:?}\n{e}"
        );
        killed += usize::from(status.signal() == Some(9));
        if let (Some(s), Some(line)) = (newest, seen.iter().find(|l| l.contains("resuming from"))) {
            assert!(
                line.ends_with(&format!("(step {s})")),
                "round {round}: {line}"
            );
        }
        assert!(!e.contains("passed over"), "round {round}: {e}");
    }
    // A round moves the run on by at most 2 saves plus what fits in 20 ms, so the first four
    // cannot have finished its 20 steps.
    assert!(killed >= 4, "only {killed} of {ROUNDS} rounds were killed");
    recover(dir, &run, STEPS, &expected, "after the kills");
    let steps: Vec<String> = fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(
        steps,
        ["5", "10", "15", "20"],
        "metrics.csv reads as one run"
    );
}

/// A child process that is killed when dropped, so that a failing test leaves no training
/// running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every file in `run` and samples/ with its bytes.
fn snapshot(run: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = [run.to_path_buf(), run.join("samples")]
        .iter()
        .flat_map(|d| fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    v.sort();
    v
}

/// While a training runs, a second one on its directory (fresh or `--resume`) fails at once,
/// naming the first one's process, and touches nothing: not even the temp file of a save in
/// progress. Once the first is killed, the kernel has dropped its lock: no stale lock.
#[test]
fn a_second_training_on_a_busy_run_directory_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = dir.join("run");
    let quiet_files = [
        "--set",
        "train.checkpoint_every=1000000",
        "--set",
        "train.log_every=1000000",
    ];
    let mut first = KillOnDrop(
        train(dir, &run, 1_000_000, &quiet_files)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The "training" line comes after the lock is taken and config.toml/metrics.csv are written.
    let mut lines = BufReader::new(first.0.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("ddpm: training"))
    {
        match lines.next() {
            Some(l) => seen.push(l.unwrap()),
            None => panic!("the first training ended: {seen:?}"),
        }
    }
    let saving = run.join(".ckpt-00000099.safetensors.4242.tmp");
    fs::write(&saving, b"a save in progress").unwrap();
    let before = snapshot(&run);
    for extra in [&[][..], &["--resume"]] {
        let out = train(dir, &run, 5, extra).output().unwrap();
        let e = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {e}");
        assert_eq!(
            e.trim_end().lines().last().unwrap(),
            format!(
                "ddpm: run directory {} is in use by process {}; wait for it to finish or choose another --out",
                run.display(),
                first.0.id()
            )
        );
    }
    assert!(
        snapshot(&run) == before,
        "a refused training changed the run directory"
    );

    first.0.kill().unwrap();
    assert_eq!(first.0.wait().unwrap().signal(), Some(9));
    let out = train(dir, &run, 2, &["--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        !saving.exists(),
        "the new owner clears crashed writes' temp files"
    );
}

/// Two trainings started together on one directory: exactly one runs, the other is refused
/// (busy, or, when it comes after the first finished, already holding a run's checkpoints),
/// and the directory holds that one run, as if it had been alone.
#[test]
fn two_trainings_started_together_never_both_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let expected = reference(dir, 3);
    let rows = |run: &Path| -> Vec<String> {
        fs::read_to_string(run.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
            .collect()
    };
    let expected_rows = rows(&dir.join("reference-3"));
    for round in 0..3 {
        let run = dir.join(format!("run-{round}"));
        let spawn = || {
            train(dir, &run, 3, &["--quiet"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let ran: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
        let refused: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
        assert_eq!(ran.len(), 1, "round {round}: {outs:?}");
        let e = stderr_of(refused[0]);
        assert_eq!(refused[0].status.code(), Some(1), "{e}");
        assert!(
            e.contains("is in use by process") || e.contains("already holds a run's checkpoints"),
            "{e}"
        );
        assert!(
            fs::read(run.join(LATEST)).unwrap() == expected,
            "round {round}"
        );
        assert_eq!(rows(&run), expected_rows, "round {round}");
    }
}

/// A NaN stop says which checkpoint it keeps, or that there is none.
#[test]
fn a_nan_stop_names_the_checkpoint_it_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tiny = config("tiny.toml");
    let diverge = |out: &str, every: &str| -> String {
        let (_, e) = run(
            dir,
            &[
                "train",
                "--config",
                tiny.to_str().unwrap(),
                "--out",
                out,
                "--device",
                "cpu",
                "--max-steps",
                "5",
                "--quiet",
                "--set",
                "optim.lr=1e30",
                "--set",
                "optim.warmup_steps=0",
                "--set",
                every,
            ],
            1,
        );
        e
    };
    let e = diverge("a", "train.checkpoint_every=10");
    assert!(
        e.contains("at step 2; stopping; no checkpoint was written before it"),
        "{e}"
    );
    let e = diverge("b", "train.checkpoint_every=1");
    assert!(
        e.contains("at step 2; stopping; the last checkpoint before it, b/ckpt-00000001.safetensors, is kept"),
        "{e}"
    );
}

/// `--resume` of a folder that does not exist creates nothing.
#[test]
fn resuming_a_missing_run_directory_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = train(dir, &dir.join("missing"), 2, &["--resume", "--quiet"])
        .output()
        .unwrap();
    let e = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("missing does not exist"), "{e}");
    assert!(!dir.join("missing").exists());
}
