//! `ddpm fid` as a user runs it: statistics files, feature arrays, folders of images with the
//! seeded Inception weights (the real ones are not in CI), checkpoints sampled on the fly, and
//! the errors.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{json_summary, run, train_tiny};
use image::RgbImage;

use ddpm::fid::seeded::{self, TEST_SEED};
use ddpm::rng::{Purpose, Stream};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The seeded Inception weights as a safetensors file in `dir`.
fn seeded_weights(dir: &Path) -> PathBuf {
    let path = dir.join("inception.safetensors");
    let (_, drawn) = seeded::network(TEST_SEED, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&drawn, &path).unwrap();
    path
}

/// A 32x32 image from one family: random sinusoidal stripes and blobs plus pixel noise.
fn image(rng: &mut Stream) -> RgbImage {
    let p: Vec<f64> = (0..12).map(|_| rng.uniform()).collect();
    let noise: Vec<f64> = (0..32 * 32 * 3).map(|_| rng.normal()).collect();
    RgbImage::from_fn(32, 32, |x, y| {
        let (x, y) = (x as f64 / 32.0, y as f64 / 32.0);
        let px = |c: usize| {
            let tau = std::f64::consts::TAU;
            let v = (tau * (p[c] * 4.0 * x + p[c + 3] * 4.0 * y) + tau * p[c + 6]).sin();
            let n = noise[((y * 32.0) as usize * 32 + (x * 32.0) as usize) * 3 + c];
            (127.5 + 90.0 * v + 25.0 * n).clamp(0.0, 255.0) as u8
        };
        image::Rgb([px(0), px(1), px(2)])
    })
}

#[test]
fn fid_of_pytorch_fid_statistics_files_matches_pytorch_fid() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        fixtures().join("pytorch_fid_64.npz"),
        fixtures().join("shifted.npz"),
    );
    let (out, _) = run(dir.path(), &["fid", s(&a), s(&b), "--json"], 0);
    let got = json_summary(&out)["fid"].as_f64().unwrap();
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let want = serde_json::from_str::<serde_json::Value>(&text).unwrap()["fid_stats_64"]
        .as_f64()
        .unwrap();
    assert!(
        (got - want).abs() <= 1e-6 * want,
        "{got} vs pytorch-fid's {want}"
    );
    // The text form, one line.
    let (out, _) = run(dir.path(), &["fid", s(&a), s(&a)], 0);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("FID ") && text.lines().count() == 1,
        "{text:?}"
    );
    let fid: f64 = text[4..].trim().parse().unwrap();
    assert!(fid.abs() < 1e-6, "FID of a file with itself: {fid}");
}

#[test]
fn feature_arrays_give_fid_kid_and_saved_statistics_without_inception() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Stream::new(1, Purpose::Eval, 0);
    let write = |name: &str, shift: f64, rng: &mut Stream| {
        let x = candle_core::Tensor::from_vec(
            (0..60 * 8)
                .map(|_| rng.normal() + shift)
                .collect::<Vec<f64>>(),
            (60, 8),
            &Device::Cpu,
        )
        .unwrap();
        let p = dir.path().join(name);
        x.write_npy(&p).unwrap();
        p
    };
    let (a, b) = (write("a.npy", 0.0, &mut rng), write("b.npy", 1.0, &mut rng));
    let stats = dir.path().join("a.npz");
    let (out, _) = run(
        dir.path(),
        &[
            "fid",
            s(&a),
            s(&b),
            "--kid",
            "--kid-subset-size",
            "30",
            "--save-stats",
            s(&stats),
            "--json",
        ],
        0,
    );
    let j = json_summary(&out);
    let (fid, kid) = (j["fid"].as_f64().unwrap(), j["kid"].as_f64().unwrap());
    // Mean shift 1 in 8 dimensions: |mu1 - mu2|^2 ~ 8, and a clear KID.
    assert!(fid > 4.0 && fid < 16.0, "{fid}");
    assert!(kid > 0.1 && j["kid_std"].as_f64().unwrap() > 0.0, "{j}");
    assert_eq!(j["kid_subset_size"], 30);
    // The saved statistics reproduce the FID when they stand in for the first set.
    let (out, _) = run(dir.path(), &["fid", s(&stats), s(&b), "--json"], 0);
    let again = json_summary(&out)["fid"].as_f64().unwrap();
    assert!((again - fid).abs() < 1e-12 * fid, "{again} vs {fid}");
    // KID needs features on both sides.
    let (_, err) = run(dir.path(), &["fid", s(&stats), s(&b), "--kid"], 1);
    assert!(err.contains("--kid") && err.contains("a.npz"), "{err}");
}

#[test]
fn images_need_the_weights_file_and_say_where_it_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    image(&mut Stream::new(0, Purpose::Eval, 0))
        .save(imgs.join("0.png"))
        .unwrap();
    let out = common::ddpm(dir.path(), &["fid", s(&imgs), s(&imgs)])
        .env_remove("DDPM_INCEPTION")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pt_inception-2015-12-05-6726825d.pth")
            && err.contains("DDPM_INCEPTION")
            && err.lines().count() == 1,
        "{err}"
    );
    let (_, err) = run(
        dir.path(),
        &["fid", s(&imgs), s(&imgs), "--inception", "nope.pth"],
        1,
    );
    assert!(
        err.contains("nope.pth") && err.contains("github.com/mseitzer/pytorch-fid"),
        "{err}"
    );
    // Not a weights file.
    std::fs::write(dir.path().join("bad.pth"), b"hello").unwrap();
    let (_, err) = run(
        dir.path(),
        &["fid", s(&imgs), s(&imgs), "--inception", "bad.pth"],
        1,
    );
    assert!(err.contains("bad.pth"), "{err}");
    // Other bad input: a missing path, an unknown kind, one set without --save-stats.
    let (_, err) = run(dir.path(), &["fid", "missing", s(&imgs)], 1);
    assert!(err.contains("missing"), "{err}");
    std::fs::write(dir.path().join("x.txt"), b"1").unwrap();
    let (_, err) = run(dir.path(), &["fid", "x.txt", s(&imgs)], 1);
    assert!(err.contains("x.txt"), "{err}");
    let (_, err) = run(dir.path(), &["fid", s(&imgs)], 1);
    assert!(err.contains("--save-stats"), "{err}");
}

#[test]
fn halves_of_one_folder_are_close_and_a_blurred_copy_is_far() {
    let dir = tempfile::tempdir().unwrap();
    let weights = seeded_weights(dir.path());
    let mut rng = Stream::new(3, Purpose::Eval, 0);
    let (a, b, blurred) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("a-blurred"),
    );
    for d in [&a, &b, &blurred] {
        std::fs::create_dir(d).unwrap();
    }
    for i in 0..16 {
        let img = image(&mut rng);
        // Half of them one level down: folders are read recursively.
        let half = if i % 2 == 0 {
            a.join(format!("{i}.png"))
        } else {
            b.join(format!("sub/{i}.png"))
        };
        std::fs::create_dir_all(half.parent().unwrap()).unwrap();
        img.save(&half).unwrap();
        if i % 2 == 0 {
            image::imageops::blur(&img, 1.5)
                .save(blurred.join(format!("{i}.png")))
                .unwrap();
        }
    }
    let stats = dir.path().join("a.npz");
    let w = s(&weights);
    let (out, _) = run(
        dir.path(),
        &[
            "fid",
            s(&a),
            s(&b),
            "--inception",
            w,
            "--batch-size",
            "3",
            "--save-stats",
            s(&stats),
            "--json",
        ],
        0,
    );
    let j = json_summary(&out);
    let halves = j["fid"].as_f64().unwrap();
    assert_eq!(
        (
            j["sides"][0]["images"].as_u64(),
            j["sides"][1]["images"].as_u64()
        ),
        (Some(8), Some(8))
    );
    let (out, _) = run(
        dir.path(),
        &["fid", s(&stats), s(&blurred), "--inception", w, "--json"],
        0,
    );
    let blur = json_summary(&out)["fid"].as_f64().unwrap();
    assert!(
        halves >= 0.0 && blur > 3.0 * halves,
        "halves {halves}, blurred {blur}"
    );
    // The same folder against its own statistics: 0 up to rounding.
    let (out, _) = run(
        dir.path(),
        &["fid", s(&stats), s(&a), "--inception", w, "--json"],
        0,
    );
    let same = json_summary(&out)["fid"].as_f64().unwrap();
    assert!(same.abs() < 1e-6 * blur, "{same}");
}

#[test]
fn a_checkpoint_sampled_on_the_fly_scores_as_its_png_and_npy_samples() {
    let dir = tempfile::tempdir().unwrap();
    let weights = seeded_weights(dir.path());
    let run_dir = train_tiny(dir.path(), "run", 2, &[]);
    let ckpt = run_dir.join("latest.safetensors");
    let (pngs, npy) = (dir.path().join("pngs"), dir.path().join("samples.npy"));
    let sample = [
        "sample",
        "--checkpoint",
        s(&ckpt),
        "-n",
        "4",
        "--steps",
        "3",
        "--seed",
        "5",
        "--quiet",
    ];
    run(
        dir.path(),
        &[&sample[..], &["--out-dir", s(&pngs)]].concat(),
        0,
    );
    run(dir.path(), &[&sample[..], &["--out", s(&npy)]].concat(), 0);
    let stats = dir.path().join("pngs.npz");
    let w = s(&weights);
    let (out, _) = run(
        dir.path(),
        &["fid", s(&pngs), "--save-stats", s(&stats), "--inception", w],
        0,
    );
    assert_eq!(String::from_utf8(out).unwrap().trim(), s(&stats));
    let fid = |first: &str, extra: &[&str]| {
        let args = [
            &["fid", first, s(&stats), "--inception", w, "--json"][..],
            extra,
        ]
        .concat();
        json_summary(&run(dir.path(), &args, 0).0)["fid"]
            .as_f64()
            .unwrap()
    };
    let tr = ddpm::fid::npz::read_stats(&stats).unwrap().trace();
    for (what, value) in [
        (
            "checkpoint",
            fid(s(&ckpt), &["-n", "4", "--steps", "3", "--seed", "5"]),
        ),
        ("npy", fid(s(&npy), &[])),
    ] {
        assert!(
            value.abs() < 1e-6 * tr,
            "{what}: FID {value} against the same images"
        );
    }
    // Another seed gives other images.
    assert!(fid(s(&ckpt), &["-n", "4", "--steps", "3", "--seed", "6"]) > 1e-3 * tr);
    // -n is required with a checkpoint.
    let (_, err) = run(
        dir.path(),
        &["fid", s(&ckpt), s(&stats), "--inception", w],
        1,
    );
    assert!(err.contains("-n"), "{err}");
}
