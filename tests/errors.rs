//! Every bad input gets exit code 1 and a one-line message naming the culprit, never a panic;
//! usage errors get exit code 2.

mod common;

use std::path::Path;

use common::{config, run, train_tiny};

/// A config for a folder dataset at `data` (8x8 grey, tiny model), written to `dir/name`.
fn folder_config(dir: &Path, name: &str, data: &Path) -> String {
    let tiny = std::fs::read_to_string(config("tiny.toml")).unwrap();
    let text = tiny.replace(
        "dataset = \"digits\"",
        &format!("dataset = \"folder\"\npath = {:?}", data.to_str().unwrap()),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn train_with(dir: &Path, cfg: &str) -> String {
    let (_, stderr) = run(
        dir,
        &[
            "train",
            "--config",
            cfg,
            "--out",
            "run",
            "--device",
            "cpu",
            "--max-steps",
            "2",
            "--quiet",
        ],
        1,
    );
    assert!(stderr.starts_with("ddpm: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

fn write_png(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 7 + y * 3) as u8]))
        .save(path)
        .unwrap();
}

/// The error of training with a config file that toml rejects: one line, `ddpm: FILE: ` and
/// toml's message with the line and column of the fault. Asserts the line is that of `line`.
fn toml_error(dir: &Path, cfg: &Path, line: &str) -> String {
    let (_, e) = run(
        dir,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "run",
            "--device",
            "cpu",
            "--max-steps",
            "2",
            "--quiet",
        ],
        1,
    );
    assert!(e.starts_with(&format!("ddpm: {}: ", cfg.display())), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let text = std::fs::read_to_string(cfg).unwrap();
    let number = text.lines().position(|l| l.contains(line)).unwrap() + 1;
    assert!(
        e.contains(&format!("line {number}, column")),
        "line {number} in {e}"
    );
    e
}

/// Mistakes in a config file are named with the file, line and column; a mistake in a --set is
/// named with that --set argument (it named the config file, which has no such key).
#[test]
fn unknown_and_mistyped_config_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tiny = std::fs::read_to_string(config("tiny.toml")).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, tiny.replace("log_every = 5", "log_evry = 5")).unwrap();
    let e = toml_error(dir, &bad, "log_evry = 5");
    assert!(e.contains("log_evry"), "{e}");
    let sixteen = "batch_size = \"sixteen\"";
    std::fs::write(&bad, tiny.replace("batch_size = 16", sixteen)).unwrap();
    let e = toml_error(dir, &bad, sixteen);
    assert!(e.contains("batch_size") || e.contains("sixteen"), "{e}");
    std::fs::write(&bad, tiny.replace("steps = 20", "steps = = 20")).unwrap();
    toml_error(dir, &bad, "steps = = 20");

    let tiny = config("tiny.toml");
    for (set, named) in [("train.nope=1", "nope"), ("train.steps=many", "steps")] {
        let (_, e) = run(
            dir,
            &[
                "train",
                "--config",
                tiny.to_str().unwrap(),
                "--set",
                set,
                "--device",
                "cpu",
            ],
            1,
        );
        assert!(
            e.contains(&format!("--set {set}")) && e.contains(named),
            "{e}"
        );
        assert!(!e.contains("tiny.toml"), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
    let (_, e) = run(dir, &["train", "--config", "missing.toml"], 1);
    assert!(e.contains("missing.toml"), "{e}");
}

/// Training on 2-D points reports points/s, not img/s (stderr lines when it is not a
/// terminal); --json says the device as the command line does ("cpu", not "Cpu").
#[test]
fn point_training_logs_points_per_second_and_json_names_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let moons = config("moons.toml");
    let (out, e) = run(
        dir,
        &[
            "train",
            "--config",
            moons.to_str().unwrap(),
            "--out",
            "run",
            "--device",
            "cpu",
            "--max-steps",
            "2",
            "--set",
            "train.log_every=1",
            "--set",
            "train.batch_size=8",
            "--json",
        ],
        0,
    );
    assert!(e.contains("points/s") && !e.contains("img/s"), "{e}");
    let json = common::json_summary(&out);
    assert_eq!(json["device"], "cpu", "{json}");
}

#[test]
fn bad_image_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = train_with(dir, &folder_config(dir, "empty.toml", &empty));
    assert!(e.contains("empty"), "{e}");

    let missing = dir.join("nowhere");
    let e = train_with(dir, &folder_config(dir, "missing.toml", &missing));
    assert!(e.contains("nowhere"), "{e}");

    let corrupt = dir.join("corrupt");
    write_png(&corrupt.join("a.png"), 8, 8);
    std::fs::write(corrupt.join("broken.png"), b"not a png at all").unwrap();
    let e = train_with(dir, &folder_config(dir, "corrupt.toml", &corrupt));
    assert!(e.contains("broken.png"), "{e}");

    let small = dir.join("small");
    write_png(&small.join("a.png"), 8, 8);
    write_png(&small.join("tiny.png"), 4, 6);
    let e = train_with(dir, &folder_config(dir, "small.toml", &small));
    assert!(e.contains("tiny.png"), "{e}");
}

#[test]
fn corrupt_and_truncated_checkpoints_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 2, &[]);
    let good = std::fs::read(run_dir.join("latest.safetensors")).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x05\x00\x00\x00\x00\x00\x00\x00hello").unwrap();
    let missing = dir.join("missing.safetensors");
    for p in [&truncated, &garbage, &missing] {
        let p = p.to_str().unwrap();
        let (_, e) = run(
            dir,
            &[
                "sample",
                "--checkpoint",
                p,
                "-n",
                "1",
                "--out",
                "-",
                "--device",
                "cpu",
            ],
            1,
        );
        assert!(e.contains(p), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        let (_, e) = run(dir, &["info", p], 1);
        assert!(e.contains(p), "{e}");
    }

    // Output that is written at the end is checked at the start: a million images into a
    // missing folder fail at once (the timeout only turns a regression into a failure rather
    // than a very long run), as does a --format that does not suit images.
    let ckpt = run_dir.join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    for (args, culprit) in [
        (&["--out", "no/such/grid.png"][..], "no/such"),
        (&["--out-dir", "x", "--format", "csv"][..], "--format csv"),
    ] {
        let out = common::ddpm(dir, &["sample", "--checkpoint", ckpt, "-n", "1000000"])
            .args(["--batch-size", "1", "--quiet", "--device", "cpu"])
            .args(args)
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains(culprit), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
    assert!(
        !dir.join("x").exists(),
        "nothing is written before a refusal"
    );
}

#[test]
fn training_into_an_existing_run_needs_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    train_tiny(dir, "run", 2, &[]);
    let tiny = config("tiny.toml");
    let (_, e) = run(
        dir,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            "run",
            "--device",
            "cpu",
            "--quiet",
        ],
        1,
    );
    assert!(e.contains("--resume"), "{e}");
}

#[test]
fn usage_errors_exit_2_and_help_has_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run(dir, &["sample"], 2);
    run(dir, &["frobnicate"], 2);
    run(dir, &["sample", "--checkpoint", "x", "--device", "tpu"], 2);
    let (out, _) = run(dir, &["train", "--help"], 0);
    assert!(String::from_utf8(out).unwrap().contains("Examples:"));
}

#[test]
fn schedule_prints_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tiny = config("tiny.toml");
    let (out, _) = run(dir, &["schedule", "--config", tiny.to_str().unwrap()], 0);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 101);
    let (out, _) = run(
        dir,
        &[
            "schedule",
            "--config",
            tiny.to_str().unwrap(),
            "--steps",
            "5",
        ],
        0,
    );
    let text = String::from_utf8(out).unwrap();
    let ts: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    // Trailing spacing of 5 of 100 steps: 19, 39, 59, 79, 99.
    assert_eq!(ts, ["19", "39", "59", "79", "99"]);
}

#[test]
fn a_diverging_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tiny = config("tiny.toml");
    // A learning rate of 1e30 blows the weights up after the first real update.
    let (_, e) = run(
        dir,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            "run",
            "--device",
            "cpu",
            "--quiet",
            "--set",
            "optim.lr=1e30",
            "--set",
            "optim.warmup_steps=0",
            "--set",
            "train.checkpoint_every=1",
        ],
        1,
    );
    assert!(e.contains("at step"), "{e}");
    let failed: u64 = e
        .split("at step ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step number in {e}"));
    let (info, _) = run(dir, &["info", "run/latest.safetensors"], 0);
    let info = String::from_utf8(info).unwrap();
    let saved: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("# step: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        saved,
        failed - 1,
        "the last good checkpoint is the step before the failure"
    );
}
