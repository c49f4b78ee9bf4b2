//! Checkpoints as the commands see them: a file written before checksums still loads, with one
//! notice; `ddpm info` checks the weights against the stored config; non-finite weights are
//! refused by every command that loads them. (Damaged files are in tests/corpus.rs.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use common::{run, train_tiny};
use ddpm::checkpoint;

/// The checkpoint at `path` as a file written before checksums: the checksum's metadata entry
/// blanked out in place (JSON allows the spaces), so every offset stays.
fn strip_checksum(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let at = header.find("\"checksum\":\"crc32:").unwrap();
    let len = "\"checksum\":\"crc32:01234567\",".len();
    assert_eq!(&header[at + len - 1..at + len], ",");
    bytes[8 + at..8 + at + len].fill(b' ');
    std::fs::write(path, bytes).unwrap();
}

/// Rewrite the checkpoint at `path` with `edit` applied to its tensors (the metadata kept, so
/// the checksum is a valid one of the new contents).
fn rewrite(path: &Path, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let mut ckpt = checkpoint::load(path).unwrap();
    edit(&mut ckpt.tensors);
    let tensors: Vec<(String, Tensor)> = ckpt.tensors.into_iter().collect();
    checkpoint::save(path, &tensors, &ckpt.metadata).unwrap();
}

fn sample_args(ckpt: &str) -> Vec<&str> {
    vec![
        "sample",
        "--checkpoint",
        ckpt,
        "-n",
        "2",
        "--steps",
        "2",
        "--out",
        "-",
        "--device",
        "cpu",
    ]
}

#[test]
fn a_checkpoint_without_a_checksum_loads_with_one_notice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 2, &[]);
    let latest = run_dir.join("latest.safetensors");
    let ckpt = latest.to_str().unwrap();
    let (want, _) = run(dir, &sample_args(ckpt), 0);
    strip_checksum(&latest);

    let (got, stderr) = run(dir, &sample_args(ckpt), 0);
    assert_eq!(got, want, "the same images from the same weights");
    let notice: Vec<&str> = stderr.lines().filter(|l| l.contains("checksum")).collect();
    assert_eq!(notice.len(), 1, "{stderr}");
    assert!(
        notice[0].contains(ckpt) && notice[0].contains("no checksum"),
        "{stderr}"
    );

    let (info, stderr) = run(dir, &["info", ckpt], 0);
    let info = String::from_utf8(info).unwrap();
    assert!(info.contains("# checksum: none"), "{info}");
    assert!(stderr.contains("no checksum"), "{stderr}");

    // A resumed run says so once, and its own checkpoints have checksums again.
    let tiny = common::config("tiny.toml");
    let (_, stderr) = run(
        dir,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            "run",
            "--resume",
            "--max-steps",
            "3",
            "--device",
            "cpu",
        ],
        0,
    );
    assert_eq!(stderr.matches("no checksum").count(), 1, "{stderr}");
    let (info, _) = run(dir, &["info", ckpt], 0);
    assert!(String::from_utf8(info)
        .unwrap()
        .contains("# checksum: verified"));
}

#[test]
fn info_checks_the_weights_against_the_stored_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 1, &[]);
    let latest = run_dir.join("latest.safetensors");
    let ckpt = latest.to_str().unwrap();
    let (info, _) = run(dir, &["info", ckpt], 0);
    assert!(String::from_utf8(info)
        .unwrap()
        .contains("# checksum: verified"));

    // An EMA tensor of the wrong shape, a stray tensor, a missing optimizer moment: each
    // re-saved with a valid checksum, so only the check against the config finds them.
    type Edit = fn(&mut BTreeMap<String, Tensor>);
    let cases: [(Edit, &str); 3] = [
        (
            |t| {
                let w = Tensor::zeros(3, DType::F32, &candle_core::Device::Cpu).unwrap();
                t.insert("ema.conv_in.bias".into(), w);
            },
            "ema.conv_in.bias",
        ),
        (
            |t| {
                let w = Tensor::zeros(3, DType::F32, &candle_core::Device::Cpu).unwrap();
                t.insert("model.extra.weight".into(), w);
            },
            "model.extra.weight",
        ),
        (
            |t| {
                let key = t.keys().find(|k| k.starts_with("optim.")).unwrap().clone();
                t.remove(&key);
            },
            "optim.",
        ),
    ];
    let good = std::fs::read(&latest).unwrap();
    for (edit, culprit) in cases {
        std::fs::write(&latest, &good).unwrap();
        rewrite(&latest, edit);
        let (_, e) = run(dir, &["info", ckpt], 1);
        assert!(e.contains(ckpt) && e.contains(culprit), "{culprit}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
}

#[test]
fn non_finite_weights_are_refused_by_sample_and_info_and_passed_over_by_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 2, &["--set", "train.checkpoint_every=1"]);
    let newest = run_dir.join("ckpt-00000002.safetensors");
    let ckpt = newest.to_str().unwrap();
    rewrite(&newest, |t| {
        let w = &t["ema.conv_in.bias"];
        let mut v: Vec<f32> = w.to_vec1().unwrap();
        v[3] = f32::NAN;
        t.insert(
            "ema.conv_in.bias".into(),
            Tensor::new(v, &candle_core::Device::Cpu).unwrap(),
        );
    });
    for args in [sample_args(ckpt), vec!["info", ckpt]] {
        let (out, e) = run(dir, &args, 1);
        assert!(out.is_empty(), "{args:?}");
        assert!(
            e.contains(ckpt) && e.contains("`ema.conv_in.bias`") && e.contains("NaN"),
            "{args:?}: {e}"
        );
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
    // --resume passes over it, saying why, to the newest checkpoint that loads.
    let tiny = common::config("tiny.toml");
    let (_, e) = run(
        dir,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            "run",
            "--resume",
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--quiet",
        ],
        0,
    );
    let passed = e
        .lines()
        .find(|l| l.contains("passed over"))
        .unwrap_or_default();
    assert!(
        passed.contains("ckpt-00000002.safetensors") && passed.contains("`ema.conv_in.bias`"),
        "{e}"
    );
    assert!(
        e.contains("resuming from run/ckpt-00000001.safetensors (step 1)"),
        "{e}"
    );
}
