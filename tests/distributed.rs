//! Data-parallel training and sampling under Open MPI's mpirun, as a user launches them: the
//! real binary, one thread per rank, shared-memory transport only. Needs the `mpi` feature and
//! `mpirun` on PATH (.ci/run installs Open MPI):
//!   cargo test --features mpi --test distributed
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{config, run};

/// `mpirun -np <np> ddpm <args>` in `dir`: loopback and shared memory only, as root where the
/// tests run as root, ranks not bound to cores (several share this machine's two), and each
/// rank on one thread unless `threads` says otherwise.
fn mpirun(dir: &Path, np: usize, threads: usize, args: &[&str]) -> Command {
    let bin = assert_cmd::cargo::cargo_bin("ddpm");
    let mut cmd = Command::new("mpirun");
    cmd.current_dir(dir)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args([
            "-np",
            &np.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .args(["--mca", "pml", "ob1", "--mca", "btl", "self,vader"])
        // Containers often forbid the cross-process memory copies vader would use.
        .args(["--mca", "btl_vader_single_copy_mechanism", "none"])
        .args(["-x", &format!("RAYON_NUM_THREADS={threads}")])
        .arg(bin)
        .args(args);
    cmd
}

fn check(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    assert!(out.status.success(), "{what}: {:?}\n{stderr}", out.status);
}

/// Train the tiny config into `dir/name` for `steps` steps, under mpirun with `np` ranks
/// (np = 0: no launcher) of `threads` threads.
fn train(dir: &Path, name: &str, np: usize, threads: usize, steps: u64, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let args = common::tiny_train_args(&out, steps, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = match np {
        0 => common::ddpm(dir, &args)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .unwrap(),
        np => mpirun(dir, np, threads, &args).output().unwrap(),
    };
    check(&output, &format!("{name} ({np} ranks)"));
    out
}

/// Every tensor of a checkpoint (weights, EMA, optimizer moments, step) as bytes, by name.
fn tensors(run: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(run.join("latest.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

fn assert_same(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len());
    for ((ka, da), (kb, db)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        assert!(
            da == db,
            "{ka} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// (step, loss) of each row of metrics.csv.
fn losses(run: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            (f.next().unwrap().into(), f.next().unwrap().into())
        })
        .collect()
}

/// Dropout, label dropout and two micro-batches per step: every draw that is made per example.
const EVERY_DRAW: [&str; 10] = [
    "--set",
    "model.dropout=0.1",
    "--set",
    "data.class_labels=true",
    "--set",
    "model.num_classes=10",
    "--set",
    "train.label_dropout=0.3",
    "--set",
    "train.grad_accum=2",
];

/// The acceptance test: two ranks of one thread train what one process of two threads trains
/// (the same two shards of every micro-batch, their gradients added in the same order), every
/// tensor of the checkpoint bit for bit and the logged losses digit for digit; only rank 0
/// wrote the run directory and stdout.
#[test]
fn two_ranks_train_what_one_process_of_two_threads_does_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let one = train(dir, "one", 0, 2, 6, &EVERY_DRAW);
    let two = train(dir, "two", 2, 1, 6, &EVERY_DRAW);
    assert_same(&one, &two);
    assert_eq!(losses(&one), losses(&two));
    let stdout = mpirun(
        dir,
        2,
        1,
        &[
            "train",
            "--config",
            config("tiny.toml").to_str().unwrap(),
            "--out",
            "again",
            "--device",
            "cpu",
            "--max-steps",
            "1",
            "--quiet",
            "--json",
        ],
    )
    .output()
    .unwrap();
    check(&stdout, "--json");
    let lines: Vec<String> = String::from_utf8_lossy(&stdout.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 1, "one summary line, from rank 0: {lines:?}");
    let json = common::json_summary(&stdout.stdout);
    assert_eq!(
        (&json["ranks"], &json["engine"]),
        (&2.into(), &"MPI".into())
    );
}

/// Three ranks (shards of 2, 3 and 3 examples of a micro-batch of 8) against three threads.
#[test]
fn three_ranks_train_what_three_threads_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let extra = ["--set", "train.grad_accum=2"];
    assert_same(
        &train(dir, "one", 0, 3, 3, &extra),
        &train(dir, "three", 3, 1, 3, &extra),
    );
}

/// Stopped at step 4 and resumed under the launcher, a run ends where a straight one does, and
/// its metrics read as one run. The checkpoint does not depend on the ranks that wrote it: the
/// same stop resumed by one process of two threads ends there too.
#[test]
fn resuming_under_the_launcher_is_a_straight_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let straight = train(dir, "straight", 2, 1, 8, &EVERY_DRAW);
    let split = train(dir, "split", 2, 1, 4, &EVERY_DRAW);
    std::fs::create_dir(dir.join("other")).unwrap();
    for f in ["latest.safetensors", "metrics.csv"] {
        std::fs::copy(split.join(f), dir.join("other").join(f)).unwrap();
    }
    let resume = [&EVERY_DRAW[..], &["--resume"]].concat();
    train(dir, "split", 2, 1, 8, &resume);
    assert_same(&straight, &split);
    // The split run also logged the step it stopped at (4); the rest is the straight run's.
    let mut resumed = losses(&split);
    assert_eq!(resumed.remove(0).0, "4");
    assert_eq!(losses(&straight), resumed);
    assert_same(&straight, &train(dir, "other", 0, 2, 8, &resume));
    // Resumed once more, the finished run stops on every rank together (none is left waiting
    // for rank 0's state) and succeeds without writing anything.
    let before = std::fs::read(split.join("metrics.csv")).unwrap();
    train(dir, "split", 2, 1, 8, &resume);
    assert_eq!(std::fs::read(split.join("metrics.csv")).unwrap(), before);
    assert_same(&straight, &split);
}

/// `mpirun -np 1` starts MPI and exchanges every gradient through it, and trains what no
/// launcher trains.
#[test]
fn a_world_of_one_is_no_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_same(
        &train(dir, "plain", 0, 2, 6, &["--set", "model.dropout=0.1"]),
        &train(dir, "launched", 1, 2, 6, &["--set", "model.dropout=0.1"]),
    );
}

/// A long run of two ranks (mpirun's environment plus `env`): start it and wait until both
/// train (rank 0 logged two rows).
fn start_long_run(dir: &Path, env: &[(&str, &str)]) -> std::process::Child {
    let tiny = config("tiny.toml");
    let args = [
        "train",
        "--config",
        tiny.to_str().unwrap(),
        "--out",
        "long",
        "--device",
        "cpu",
        "--max-steps",
        "1000000",
        "--set",
        "train.log_every=1",
        "--set",
        "train.checkpoint_every=1000000",
    ];
    let child = mpirun(dir, 2, 1, &args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.join("long").join("metrics.csv");
    let t = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The pid of rank `rank` among mpirun's children (Linux: read from their environment).
fn rank_pid(mpirun: u32, rank: usize) -> u32 {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Field 4 of /proc/PID/stat, after the parenthesised command name, is the parent.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if parent != Some(&mpirun.to_string()) {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return pid;
        }
    }
    panic!("no rank {rank} under mpirun {mpirun}");
}

/// Killing rank 1 ends the job: the other rank stops (it would otherwise wait for rank 1's
/// gradients forever) and mpirun exits non-zero naming rank 1, within 20 s (about 2 s here:
/// Open MPI sends the others SIGTERM, then SIGKILL a second later).
#[test]
fn killing_a_rank_ends_the_job_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let child = start_long_run(dir, &[]);
    let victim = rank_pid(child.id(), 1);
    let survivor = rank_pid(child.id(), 0);
    let t = Instant::now();
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mpirun exited {:?}", out.status);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(stderr.contains("rank 1"), "{stderr}");
    // mpirun sends rank 0 SIGKILL and exits; the kernel may take a moment to tear it down.
    let gone = || {
        let stat = std::fs::read_to_string(format!("/proc/{survivor}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    };
    let t = Instant::now();
    while !gone() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(), "rank 0 (pid {survivor}) still runs");
    eprintln!("killing rank 1 ended the job in {took:?}");
}

/// A rank that fails says why, naming itself, and ends the job at once: here rank 0 cannot
/// create the run directory (its parent is a file), while rank 1 already waits for its state.
#[test]
fn a_failing_rank_names_itself_and_ends_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("file"), b"").unwrap();
    let tiny = config("tiny.toml");
    let t = Instant::now();
    let out = mpirun(
        dir,
        2,
        1,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            "file/run",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        stderr.contains("ddpm: rank 0 of 2: ") && stderr.contains("file/run"),
        "{stderr}"
    );
    // mpirun's own banner ("MPI_ABORT was invoked on rank 0 ...") usually follows, but Open MPI
    // 4.1 sometimes loses it ("ORTE_ERROR_LOG: Data unpack would read past end of buffer").
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Ctrl-C on mpirun: Open MPI passes SIGTERM to the ranks (after odls_base_sigkill_timeout
/// seconds, and SIGKILL as long again later), the ranks agree to stop after the same step, rank
/// 0 writes one checkpoint, and every rank takes the interrupted exit (130; mpirun itself exits
/// 1). The checkpoint resumes into the straight run.
#[test]
fn ctrl_c_on_mpirun_checkpoints_once_and_every_rank_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 5 s between Ctrl-C and SIGTERM, and between SIGTERM and SIGKILL (1 s by default: too
    // short to save a checkpoint on a loaded machine).
    let child = start_long_run(dir, &[("OMPI_MCA_odls_base_sigkill_timeout", "5")]);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stopped: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("interrupted at step"))
        .collect();
    assert_eq!(
        stopped.len(),
        2,
        "both ranks stop as interrupted:\n{stderr}"
    );
    let step = |l: &str| {
        l.split("at step ")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .map(String::from)
    };
    assert_eq!(step(stopped[0]), step(stopped[1]), "{stderr}");
    let step: u64 = step(stopped[0]).unwrap().parse().unwrap();
    let ckpts: Vec<_> = std::fs::read_dir(dir.join("long"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    assert_eq!(
        ckpts,
        [format!("ckpt-{step:08}.safetensors")],
        "one checkpoint"
    );
    let (info, _) = run(dir, &["info", "long/latest.safetensors"], 0);
    assert!(String::from_utf8_lossy(&info).contains(&format!("# step: {step}\n")));
}

/// `ddpm sample` under mpirun: -n split across the ranks as --first-index would, each rank
/// writing its own images, and together exactly the files (names and bytes) one process writes.
#[test]
fn two_ranks_sample_the_files_one_process_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train(dir, "run", 0, 2, 2, &[]).join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let sample = [
        "sample",
        "--checkpoint",
        ckpt,
        "-n",
        "7",
        "--first-index",
        "3",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--quiet",
    ];
    let one = run(dir, &[&sample[..], &["--out-dir", "one"]].concat(), 0).0;
    let two = mpirun(dir, 2, 1, &[&sample[..], &["--out-dir", "two"]].concat())
        .output()
        .unwrap();
    check(&two, "sampling on 2 ranks");
    let files = |d: &str| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join(d))
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (files("one"), files("two"));
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        (3..10)
            .map(|i| format!("sample-{i:05}.png"))
            .collect::<Vec<_>>()
    );
    assert!(a == b, "the two folders differ");
    // Every path printed once, by the rank that wrote it.
    let mut printed: Vec<String> = String::from_utf8_lossy(&two.stdout)
        .lines()
        .map(String::from)
        .collect();
    printed.sort();
    assert_eq!(printed.len(), 7, "{printed:?}");
    assert_eq!(String::from_utf8_lossy(&one).lines().count(), 7);
}

/// More ranks than examples in a micro-batch is refused before any work, saying why.
#[test]
fn a_batch_smaller_than_the_ranks_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = config("tiny.toml");
    let out = mpirun(
        tmp.path(),
        3,
        1,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--device",
            "cpu",
            "--set",
            "train.batch_size=2",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("in micro-batches of 2 cannot be split across 3 ranks"),
        "{stderr}"
    );
}
