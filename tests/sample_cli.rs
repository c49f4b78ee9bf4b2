//! `ddpm sample`'s sampling-time options through the binary: a checkpoint's [sample] settings are
//! defaults (--sampler takes its own step count, --spacing, --clip-x0/--no-clip-x0,
//! --set sample.key=value), --out's extension picks the file format, --nrow lays out grids.

mod common;

use std::path::Path;

use common::{json_summary, run, train_tiny};

/// `ddpm sample` on the CPU with `args` after the checkpoint.
fn sample(dir: &Path, ckpt: &str, args: &[&str], code: i32) -> (Vec<u8>, String) {
    let mut a = vec!["sample", "--checkpoint", ckpt, "--device", "cpu", "--quiet"];
    a.extend_from_slice(args);
    run(dir, &a, code)
}

/// The values of an .npy file as written by `ddpm sample --format npy` (f32, little-endian).
fn npy_values(bytes: &[u8]) -> Vec<f32> {
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// tiny.toml stores sampler ddim with 5 steps over T = 100. Those 5 steps are DDIM's: another
/// sampler takes its own default (DPM++ 2M 20, ancestral T), as the README says; before, every
/// sampler ran the config's 5. With the default --device, a CPU-only build says nothing about
/// CUDA (it printed "built without CUDA support" on every command).
#[test]
fn each_sampler_takes_its_own_steps_unless_the_config_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train_tiny(dir, "run", 2, &[]).join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let steps = |extra: &[&str]| {
        let mut a = vec!["sample", "--checkpoint", ckpt, "-n", "1", "--json"];
        a.extend_from_slice(&["--out", "x.png"]);
        a.extend_from_slice(extra);
        let (out, stderr) = run(dir, &a, 0);
        if cfg!(not(feature = "cuda")) {
            assert!(!stderr.contains("CUDA"), "{stderr}");
        }
        let json = json_summary(&out);
        assert_eq!(json["device"], "cpu", "{json}");
        json["steps"].as_u64().unwrap()
    };
    assert_eq!(steps(&[]), 5);
    assert_eq!(steps(&["--sampler", "ddim"]), 5);
    assert_eq!(steps(&["--sampler", "dpm++2m"]), 20);
    assert_eq!(steps(&["--sampler", "ddpm"]), 100);
    assert_eq!(steps(&["--sampler", "ddpm", "--steps", "7"]), 7);
    assert_eq!(steps(&["--set", "sample.steps=3"]), 3);
}

/// The stored sampling settings are defaults: --set sample.key=value, --spacing and
/// --clip-x0/--no-clip-x0 change them (the flags over --set), --set sample.use_ema=false is
/// --no-ema; keys of the trained model and unknown keys are refused naming the --set argument.
/// Two steps of training leave the network near its start (eps ~ 0), so an unclipped x0 lands
/// far outside [-1, 1] and a clipped one inside.
#[test]
fn stored_sample_settings_are_defaults_not_locks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train_tiny(dir, "run", 2, &[]).join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let npy = |extra: &[&str]| {
        let (out, _) = sample(
            dir,
            ckpt,
            &[&["-n", "2", "--format", "npy", "--out", "-"][..], extra].concat(),
            0,
        );
        npy_values(&out)
    };
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let clipped = npy(&[]);
    assert!(max_abs(&clipped) <= 1.0);
    let unclipped = npy(&["--no-clip-x0"]);
    assert!(max_abs(&unclipped) > 1.5, "{}", max_abs(&unclipped));
    assert_eq!(npy(&["--set", "sample.clip_x0=false"]), unclipped);
    assert_eq!(
        npy(&["--set", "sample.clip_x0=false", "--clip-x0"]),
        clipped
    );
    assert_eq!(npy(&["--clip-x0", "--no-clip-x0"]), unclipped, "last wins");

    let leading = npy(&["--spacing", "leading"]);
    assert_ne!(leading, clipped);
    assert_eq!(npy(&["--set", "sample.spacing=\"leading\""]), leading);
    assert_eq!(npy(&["--set", "sample.spacing=leading"]), leading);

    let raw = npy(&["--no-ema"]);
    assert_ne!(raw, clipped, "2 steps apart, EMA and raw weights differ");
    assert_eq!(npy(&["--set", "sample.use_ema=false"]), raw);

    for (set, named) in [
        ("model.base_channels=8", "only sample."),
        ("sample.stepz=3", "stepz"),
        ("sample.eta=2", "sample.eta"),
    ] {
        let (_, e) = sample(dir, ckpt, &["--set", set, "--out", "-"], 1);
        assert!(
            e.contains(&format!("--set {set}")) && e.contains(named),
            "{e}"
        );
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
    let (_, e) = run(
        dir,
        &["sample", "--checkpoint", ckpt, "--spacing", "sideways"],
        2,
    );
    assert!(e.contains("sideways"), "{e}");
}

/// --out's extension names the format: a .jpg holds JPEG bytes (it held PNG bytes), .webp
/// WebP, .bmp BMP; an extension that names no format is refused before sampling, as is one that
/// contradicts --format. --format jpeg with --out-dir writes sample-NNNNN.jpg files.
#[test]
fn the_out_extension_picks_the_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train_tiny(dir, "run", 2, &[]).join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    for (file, magic) in [
        ("x.jpg", &b"\xff\xd8\xff"[..]),
        ("x.JPEG", &b"\xff\xd8\xff"[..]),
        ("x.bmp", &b"BM"[..]),
        ("x.png", &b"\x89PNG"[..]),
    ] {
        let (out, _) = sample(dir, ckpt, &["-n", "2", "--out", file], 0);
        assert_eq!(String::from_utf8(out).unwrap().trim(), file);
        let bytes = std::fs::read(dir.join(file)).unwrap();
        assert!(bytes.starts_with(magic), "{file}: {:?}", &bytes[..4]);
        image::load_from_memory(&bytes).unwrap();
    }
    sample(dir, ckpt, &["-n", "1", "--out", "x.webp"], 0);
    let bytes = std::fs::read(dir.join("x.webp")).unwrap();
    assert_eq!((&bytes[..4], &bytes[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));

    let (_, e) = sample(dir, ckpt, &["-n", "1", "--out", "x.tiff"], 1);
    assert!(e.contains("--out x.tiff") && e.contains(".tiff"), "{e}");
    assert!(!dir.join("x.tiff").exists());
    let (_, e) = sample(
        dir,
        ckpt,
        &["-n", "1", "--format", "npy", "--out", "x.png"],
        1,
    );
    assert!(e.contains("--format npy") && e.contains("x.png"), "{e}");

    let (out, _) = sample(
        dir,
        ckpt,
        &["-n", "2", "--format", "jpeg", "--out-dir", "jpegs"],
        0,
    );
    let listed: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].ends_with("sample-00000.jpg"), "{listed:?}");
    assert!(std::fs::read(dir.join(&listed[1]))
        .unwrap()
        .starts_with(b"\xff\xd8\xff"));
}

/// --nrow sets the grid's columns: -n 20 --nrow 10 is 2 rows of 10 8x8 images with 2-pixel
/// padding (10 * 10 + 2 = 102 by 2 * 10 + 2 = 22) where the default square-ish grid is 5 wide.
/// --out-dir - (a folder on stdout) is refused.
#[test]
fn grids_take_nrow_columns_and_out_dir_is_never_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train_tiny(dir, "run", 2, &[]).join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let size = |extra: &[&str]| {
        let (png, _) = sample(
            dir,
            ckpt,
            &[&["-n", "20", "--grid", "--out", "-"][..], extra].concat(),
            0,
        );
        let img = image::load_from_memory(&png).unwrap();
        (img.width(), img.height())
    };
    assert_eq!(size(&["--nrow", "10"]), (102, 22));
    assert_eq!(size(&[]), (52, 42));
    let (_, e) = sample(dir, ckpt, &["--nrow", "0", "--grid", "--out", "-"], 1);
    assert!(e.contains("--nrow"), "{e}");
    let (_, e) = sample(dir, ckpt, &["-n", "2", "--out-dir", "-"], 1);
    assert!(e.contains("--out-dir -"), "{e}");
    assert!(!dir.join("-").exists());
}

/// Image-folder classes keep their folder names in the checkpoint: `ddpm info` lists them and
/// --class takes a name or a number (the JSON summary says the labels sampled); an unknown name
/// is refused with the names. Before, --class took numbers only and the names were lost.
#[test]
fn folder_classes_are_sampled_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (class, shade) in [("cat", 40u8), ("dog", 200u8)] {
        let folder = dir.join("data").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..2u8 {
            image::GrayImage::from_fn(8, 8, |x, _| image::Luma([shade + i * 10 + x as u8]))
                .save(folder.join(format!("{i}.png")))
                .unwrap();
        }
    }
    let tiny = std::fs::read_to_string(common::config("tiny.toml")).unwrap();
    let data = dir.join("data");
    let text = tiny
        .replace("[model]\n", "[model]\nnum_classes = 2\n")
        .replace(
            "dataset = \"digits\"",
            &format!(
                "dataset = \"folder\"\npath = {:?}\nclass_labels = true",
                data.to_str().unwrap()
            ),
        );
    std::fs::write(dir.join("pets.toml"), text).unwrap();
    let (out, _) = run(
        dir,
        &[
            "train",
            "--config",
            "pets.toml",
            "--out",
            "run",
            "--device",
            "cpu",
            "--max-steps",
            "2",
            "--quiet",
        ],
        0,
    );
    let ckpt = String::from_utf8(out).unwrap().trim().to_string();
    let (info, _) = run(dir, &["info", &ckpt], 0);
    let info = String::from_utf8(info).unwrap();
    assert!(info.contains("0 cat, 1 dog"), "{info}");
    let labels = |class: &str| {
        let (out, _) = sample(
            dir,
            &ckpt,
            &["-n", "2", "--class", class, "--json", "--out", "x.png"],
            0,
        );
        json_summary(&out)["classes"].clone()
    };
    assert_eq!(labels("dog"), serde_json::json!([1]));
    assert_eq!(labels("1"), serde_json::json!([1]));
    assert_eq!(labels("cat,dog"), serde_json::json!([0, 1]));
    let (_, e) = sample(dir, &ckpt, &["--class", "cow", "--out", "-"], 1);
    assert!(e.contains("--class cow") && e.contains("cat, dog"), "{e}");
}
