//! Continuing and reusing runs as a user does: `--resume` without `--config`, with changed
//! optimisation and length (logged), refusing changes to what the run learns, saying when a
//! run is finished; `--init-from` a checkpoint's weights; and the learning-rate schedule as
//! metrics.csv shows it. The bit-identical resume tests are in train_sample.rs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{config, run, train_tiny};
use ddpm::checkpoint;

fn tensors(path: &Path) -> BTreeMap<String, candle_core::Tensor> {
    checkpoint::load(path).unwrap().tensors
}

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// (step, lr) of every row of a run's metrics.csv.
fn lr_column(run_dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|row| {
            let cols: Vec<&str> = row.split(',').collect();
            (cols[0].parse().unwrap(), cols[2].parse().unwrap())
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1e-12)
}

#[test]
fn resume_reads_the_run_directory_and_takes_new_optim_and_length() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    train_tiny(dir, "run", 4, &[]);
    let resume = |extra: &[&str], code: i32| {
        let mut args = vec!["train", "--out", "run", "--resume", "--device", "cpu"];
        args.extend_from_slice(extra);
        run(dir, &args, code)
    };

    // No --config: the run directory's config.toml. A new lr and length are taken and logged.
    let (out, err) = resume(&["--set", "optim.lr=5e-4", "--set", "train.steps=8"], 0);
    assert!(err.contains("--resume: optim.lr: 0.001 -> 0.0005"), "{err}");
    assert!(err.contains("--resume: train.steps: 20 -> 8"), "{err}");
    assert!(err.contains("step 4 of 8"), "{err}");
    let ckpt = String::from_utf8(out.clone()).unwrap();
    assert_eq!(
        checkpoint::load(&dir.join(ckpt.trim()))
            .unwrap()
            .step()
            .unwrap(),
        8
    );
    // Step 8's update (after 7 steps, in the 10-step warm-up) used the new lr: 5e-4 * 7/10.
    let rows = lr_column(&dir.join("run"));
    assert_eq!(rows.last().unwrap().0, 8);
    assert!(close(rows.last().unwrap().1, 3.5e-4), "{rows:?}");
    // config.toml now holds the new values, so a plain --resume keeps them.
    let written = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    assert!(written.contains("steps = 8"), "{written}");

    // A finished run says so, and resuming it succeeds doing nothing (as recovering from a
    // crash after the last save must): the same checkpoint, metrics.csv untouched.
    let metrics = std::fs::read(dir.join("run/metrics.csv")).unwrap();
    let (again, err) = resume(&[], 0);
    assert!(
        err.contains("finished at step 8 of 8; raise train.steps to continue"),
        "{err}"
    );
    assert_eq!(again, out);
    assert_eq!(std::fs::read(dir.join("run/metrics.csv")).unwrap(), metrics);
    // Past the end is an error: a run cannot go back.
    let (_, err) = resume(&["--set", "train.steps=6"], 1);
    assert!(
        err.contains("is at step 8, past train.steps = 6; raise it to continue"),
        "{err}"
    );
    // What the run learns from is locked, by key.
    for (set, key, was) in [
        (
            "model.base_channels=8",
            "model.base_channels = 8",
            "with 16",
        ),
        ("train.seed=3", "train.seed = 3", "with 0"),
        (
            "data.random_flip=true",
            "data.random_flip = true",
            "with false",
        ),
        (
            "diffusion.timesteps=50",
            "diffusion.timesteps = 50",
            "with 100",
        ),
    ] {
        let (_, err) = resume(&["--set", set, "--set", "train.steps=10"], 1);
        assert!(err.contains(key) && err.contains(was), "{set}: {err}");
    }
    // Without a run there is nothing to resume, and --resume needs --out without --config.
    let (_, err) = run(dir, &["train", "--out", "none", "--resume"], 1);
    assert!(err.contains("none holds no run"), "{err}");
    run(dir, &["train", "--resume"], 2);
}

#[test]
fn init_from_starts_a_new_run_from_the_weights_and_ema() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let source = train_tiny(dir, "source", 6, &[]).join("latest.safetensors");
    let src = source.to_str().unwrap();

    // Zero steps: the new run's checkpoint holds the source's weights and EMA, step 0, a
    // fresh optimizer; no --config needed.
    let (_, err) = run(
        dir,
        &[
            "train",
            "--init-from",
            src,
            "--out",
            "tuned",
            "--max-steps",
            "0",
        ],
        0,
    );
    assert!(err.contains("from the weights of"), "{err}");
    let (a, b) = (
        tensors(&source),
        tensors(&dir.join("tuned/latest.safetensors")),
    );
    let mut compared = 0;
    for (key, t) in &a {
        if key.starts_with("model.") || key.starts_with("ema.") {
            assert_eq!(values(t), values(&b[key]), "{key}");
            compared += 1;
        }
    }
    assert!(compared > 10);
    assert_ne!(
        values(&a["ema.conv_in.weight"]),
        values(&a["model.conv_in.weight"])
    );
    assert_eq!(values(&b["optim.step"]), [0.0]);
    let m = b.iter().find(|(k, _)| k.starts_with("optim.m.")).unwrap().1;
    assert!(values(m).iter().all(|&v| v == 0.0));
    let meta = checkpoint::load(&dir.join("tuned/latest.safetensors")).unwrap();
    assert_eq!(meta.step().unwrap(), 0);

    // And it trains on from there, with its own config (here the repo's, a new lr).
    let tiny = config("tiny.toml");
    let (out, _) = run(
        dir,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--init-from",
            src,
            "--out",
            "tuned2",
            "--max-steps",
            "3",
            "--set",
            "optim.lr=1e-4",
            "--set",
            "model.dropout=0.1",
            "--device",
            "cpu",
            "--quiet",
        ],
        0,
    );
    let ckpt = String::from_utf8(out.clone()).unwrap();
    assert_eq!(
        checkpoint::load(&dir.join(ckpt.trim()))
            .unwrap()
            .step()
            .unwrap(),
        3
    );

    // Another network is refused, by key; so is an existing run.
    for (set, key) in [
        ("model.base_channels=8", "model.base_channels = 8"),
        ("model.num_res_blocks=2", "model.num_res_blocks = 2"),
    ] {
        let args = ["train", "--init-from", src, "--out", "other", "--set", set];
        let (_, err) = run(dir, &args, 1);
        assert!(
            err.contains(key) && err.contains("the checkpoint's network has"),
            "{err}"
        );
    }
    let (_, err) = run(dir, &["train", "--init-from", src, "--out", "tuned"], 1);
    assert!(err.contains("already holds a run"), "{err}");
    run(
        dir,
        &["train", "--init-from", src, "--resume", "--out", "x"],
        2,
    );
}

/// Warm-up 10 of 20 steps from lr 1e-3, then cosine to min_lr 1e-4; rows every 5 steps, each
/// showing the lr of that step's update (after step - 1 completed steps).
#[test]
fn metrics_show_the_cosine_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let set = [
        "--set",
        "optim.schedule=\"cosine\"",
        "--set",
        "optim.min_lr=1e-4",
    ];
    let run_dir = train_tiny(dir, "cos", 20, &set);
    let cosine = |done: f64| {
        let p = (done - 10.0) / 10.0;
        1e-4 + 9e-4 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    };
    let want = [
        (5, 4e-4),
        (10, 9e-4),
        (15, cosine(14.0)),
        (20, cosine(19.0)),
    ];
    let rows = lr_column(&run_dir);
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for ((step, lr), (want_step, want_lr)) in rows.iter().zip(want) {
        assert_eq!(*step, want_step);
        assert!(close(*lr, want_lr), "step {step}: lr {lr}, want {want_lr}");
    }
}
