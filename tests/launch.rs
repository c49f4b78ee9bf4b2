//! Launchers without MPI: the environment torchrun sets (RANK, WORLD_SIZE, ...) splits
//! `ddpm sample` across processes with no communication at all, a world of one trains as no
//! launcher does, and what cannot work is refused with a message that says what to do.

mod common;

use std::path::Path;

use common::{config, train_tiny};

/// `ddpm <args>` in `dir` as torchrun's rank `rank` of `size` would start it; (code, stdout, stderr).
fn as_rank(dir: &Path, rank: usize, size: usize, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = common::ddpm(dir, args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", size.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", size.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), out.stdout, stderr)
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
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
}

/// Three ranks share -n 8 from --first-index 2 as 2, 3 and 3 images, each writing its own:
/// together the files one process writes, byte for byte; with more ranks than images, a rank
/// may have none.
#[test]
fn sample_ranks_split_n_like_first_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train_tiny(dir, "run", 2, &[]).join("latest.safetensors");
    let args = |out: &'static str, n: &'static str| {
        vec![
            "sample",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "-n",
            n,
            "--first-index",
            "2",
            "--steps",
            "3",
            "--device",
            "cpu",
            "--quiet",
            "--out-dir",
            out,
        ]
    };
    common::run(dir, &args("one", "8"), 0);
    let mut printed = Vec::new();
    for rank in 0..3 {
        let (code, stdout, stderr) = as_rank(dir, rank, 3, &args("three", "8"));
        assert_eq!(code, 0, "{stderr}");
        printed.push(String::from_utf8_lossy(&stdout).lines().count());
    }
    assert_eq!(printed, [2, 3, 3]);
    assert!(files(&dir.join("one")) == files(&dir.join("three")));
    // Two images over three ranks: rank 0 has none and writes nothing.
    let (code, stdout, _) = as_rank(dir, 0, 3, &args("few", "2"));
    assert_eq!((code, stdout.len()), (0, 0));
}

/// One file for all images (a grid, .npy, --out) cannot come from several processes.
#[test]
fn sample_ranks_refuse_single_file_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train_tiny(dir, "run", 0, &[]).join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    for extra in [&["--grid"][..], &["--out", "x.png"], &["--format", "npy"]] {
        let args = [
            &["sample", "--checkpoint", ckpt, "-n", "4", "--device", "cpu"][..],
            extra,
        ]
        .concat();
        let (code, _, stderr) = as_rank(dir, 1, 2, &args);
        assert_eq!(code, 1, "{extra:?}: {stderr}");
        assert!(
            stderr.contains("rank 1 of 2: with several processes each writes its own images"),
            "{stderr}"
        );
    }
}

/// torchrun with WORLD_SIZE=1 is a world of one: the same checkpoint as no launcher.
#[test]
fn a_torchrun_world_of_one_trains_as_no_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let plain = train_tiny(dir, "plain", 3, &[]);
    let tiny = config("tiny.toml");
    let (code, _, stderr) = as_rank(
        dir,
        0,
        1,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            "launched",
            "--device",
            "cpu",
            "--max-steps",
            "3",
            "--quiet",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let read = |p: &Path| std::fs::read(p.join("latest.safetensors")).unwrap();
    assert!(read(&plain) == read(&dir.join("launched")));
}

/// What several processes cannot do here is refused before any work, saying what would work.
#[test]
fn impossible_launches_are_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tiny = config("tiny.toml");
    let tiny = tiny.to_str().unwrap();
    let train = |extra: &[&'static str]| -> Vec<&str> {
        [
            &["train", "--config", tiny, "--out", "r", "--max-steps", "1"][..],
            extra,
        ]
        .concat()
    };
    // CPU ranks meeting over TCP: ddpm's CPU engine is MPI.
    let (code, _, stderr) = as_rank(dir, 0, 2, &train(&["--device", "cpu"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("rank 0 of 2") && stderr.contains("mpirun or srun"),
        "{stderr}"
    );
    // Several ranks on one named GPU.
    let (code, _, stderr) = as_rank(dir, 1, 2, &train(&["--device", "cuda:1"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("each takes cuda:LOCAL_RANK (here cuda:1)"),
        "{stderr}"
    );
    // A launcher variable that is not a number names itself.
    let out = common::ddpm(dir, &train(&["--device", "cpu"]))
        .env("RANK", "one")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RANK=\"one\" is not a number"));
    // Usage errors: exit 2.
    common::run(dir, &train(&["--rank", "0"]), 2);
    common::run(dir, &train(&["--launcher", "slurm"]), 2);
    // Rank flags win over the environment, --launcher none over both.
    let (code, _, stderr) = as_rank(
        dir,
        0,
        1,
        &train(&["--device", "cpu", "--rank", "1", "--world-size", "3"]),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("rank 1 of 3"), "{stderr}");
    let (code, _, stderr) = as_rank(
        dir,
        0,
        2,
        &train(&["--device", "cpu", "--launcher", "none", "--quiet"]),
    );
    assert_eq!(code, 0, "{stderr}");
}

/// Open MPI's environment with a build that has no MPI: the rebuild command.
#[cfg(not(feature = "mpi"))]
#[test]
fn mpi_ranks_need_the_mpi_feature() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = config("tiny.toml");
    let out = common::ddpm(
        tmp.path(),
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--device",
            "cpu",
        ],
    )
    .env("OMPI_COMM_WORLD_RANK", "0")
    .env("OMPI_COMM_WORLD_SIZE", "2")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "built without MPI support; rebuild with `cargo build --release --features mpi`"
        ),
        "{stderr}"
    );
}
