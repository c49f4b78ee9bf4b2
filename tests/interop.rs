//! `ddpm import` and `ddpm export` as a user runs them: diffusers folders made by diffusers
//! (tests/fixtures/diffusers, from benches/interop/fixtures.py) imported and sampled from a
//! given x_T, and trained checkpoints exported and imported back bit for bit.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{config, run, train_tiny};
use ddpm::data::images::encode_npy;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(name)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The f32 values of a .npy file `ddpm` wrote.
fn npy_values(bytes: &[u8]) -> Vec<f32> {
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A diffusers pipeline imported and sampled with DDIM-50 from diffusers' x_T gives
/// diffusers' image (DDIMPipeline, use_clipped_model_output=True) within 1e-3; the imported
/// checkpoint also edits, inpaints, interpolates and evaluates.
#[test]
fn imported_pipeline_samples_what_diffusers_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (out, stderr) = run(
        dir,
        &[
            "import",
            s(&fixture("tf_pipeline")),
            "--out",
            "tf.safetensors",
        ],
        0,
    );
    assert_eq!(String::from_utf8(out).unwrap(), "tf.safetensors\n");
    assert!(stderr.contains("imported 103875 parameters"), "{stderr}");
    let io = tensors(&fixture("tf_pipeline").join("io.safetensors"));
    std::fs::write(dir.join("x_t.npy"), encode_npy(&io["ddim_x_t"]).unwrap()).unwrap();
    let args = [
        "sample",
        "--checkpoint",
        "tf.safetensors",
        "--noise",
        "x_t.npy",
        "-n",
        "2",
        "--sampler",
        "ddim",
        "--steps",
        "50",
        "--format",
        "npy",
        "--out",
        "-",
    ];
    let (npy, _) = run(dir, &args, 0);
    let ours = npy_values(&npy);
    let theirs: Vec<f32> = io["ddim_out"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ours.len(), theirs.len());
    let diff = ours
        .iter()
        .zip(&theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-3, "max abs difference {diff}");
    // The other commands take the imported checkpoint as they take a trained one.
    image::RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 30) as u8, 90])
    })
    .save(dir.join("in.png"))
    .unwrap();
    image::GrayImage::from_fn(8, 8, |_, y| image::Luma([if y < 4 { 255 } else { 0 }]))
        .save(dir.join("mask.png"))
        .unwrap();
    let c = "tf.safetensors";
    for line in [
        "sample --checkpoint tf.safetensors --init in.png --mask mask.png -n 1 --steps 10 --out fill.png",
        "sample --checkpoint tf.safetensors --init in.png --strength 0.5 -n 1 --steps 10 --out edit.png",
        "interpolate --checkpoint tf.safetensors --seeds 1,2 --frames 3 --steps 5 --out strip.png",
        "eval --checkpoint tf.safetensors --data digits -n 2 --method ode --ode-steps 4",
    ] {
        run(dir, &line.split(' ').collect::<Vec<_>>(), 0);
    }
    for made in ["fill.png", "edit.png", "strip.png"] {
        assert!(dir.join(made).is_file(), "{made}");
    }
    // No image data is recorded in a diffusers folder: eval says so.
    let (_, e) = run(dir, &["eval", "--checkpoint", c, "-n", "2"], 1);
    assert!(e.contains("data.path"), "{e}");
}

/// A bare UNet2DModel folder with the PyTorch pickle and a DDIMScheduler config: its classes
/// have no "no class" label, so sampling needs --class.
#[test]
fn imported_class_model_without_a_null_class_needs_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run(
        dir,
        &[
            "import",
            s(&fixture("scale_shift_unet")),
            "--out",
            "c.safetensors",
            "-q",
        ],
        0,
    );
    let base = [
        "sample",
        "--checkpoint",
        "c.safetensors",
        "-n",
        "2",
        "--steps",
        "5",
        "--out",
        "g.png",
    ];
    let (_, e) = run(dir, &base, 1);
    assert!(
        e.contains("no \"no class\" label") && e.contains("--class"),
        "{e}"
    );
    let mut with = base.to_vec();
    with.extend(["--class", "0,2", "--guidance", "2"]);
    let (_, e) = run(dir, &with, 1);
    assert!(e.contains("guidance 2"), "{e}");
    with.truncate(with.len() - 2);
    run(dir, &with, 0);
}

/// export then import gives back the checkpoint's weights bit for bit (EMA by default, the
/// raw ones with --no-ema) and its model and diffusion config, with the diffusers options set.
#[test]
fn export_then_import_gives_back_the_weights_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let options = [
        "--set",
        "model.scale_shift=true",
        "--set",
        "model.downsample_padding=0",
        "--set",
        "model.norm_eps=1e-6",
        "--set",
        "model.flip_sin_to_cos=true",
        "--set",
        "model.freq_shift=0",
        "--set",
        "model.center_input_sample=true",
        "--set",
        "model.mid_block_scale_factor=1.5",
        "--set",
        "model.num_heads=1",
        "--set",
        "model.attention_head_dim=8",
    ];
    for (name, extra) in [("plain", &[][..]), ("options", &options[..])] {
        let run_dir = train_tiny(dir, name, 3, extra);
        let ckpt = run_dir.join("latest.safetensors");
        let original = tensors(&ckpt);
        for (flag, prefix) in [(None, "ema."), (Some("--no-ema"), "model.")] {
            let folder = dir.join(format!("{name}-{prefix}diffusers"));
            let mut args = vec!["export", s(&ckpt), "--out", s(&folder)];
            args.extend(flag);
            let (out, _) = run(dir, &args, 0);
            let listed = String::from_utf8(out).unwrap();
            assert_eq!(listed.lines().count(), 4, "{listed}");
            assert!(folder
                .join("unet/diffusion_pytorch_model.safetensors")
                .is_file());
            let back = dir.join(format!("{name}-{prefix}back.safetensors"));
            run(dir, &["import", s(&folder), "--out", s(&back), "-q"], 0);
            let imported = tensors(&back);
            let mut n = 0;
            for (key, t) in &original {
                let Some(rest) = key.strip_prefix(prefix) else {
                    continue;
                };
                for p in ["model.", "ema."] {
                    let got = &imported[&format!("{p}{rest}")];
                    let (a, b): (Vec<f32>, Vec<f32>) = (
                        t.flatten_all().unwrap().to_vec1().unwrap(),
                        got.flatten_all().unwrap().to_vec1().unwrap(),
                    );
                    assert_eq!(t.dims(), got.dims(), "{key}");
                    assert!(
                        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{key}"
                    );
                }
                n += 1;
            }
            assert_eq!(2 * n, imported.len());
            let cfg = |p: &Path| ddpm::checkpoint::load(p).unwrap().stored_config().unwrap();
            let (a, b) = (cfg(&ckpt), cfg(&back));
            assert_eq!(a.model, b.model);
            // diffusers' beta ends are ddpm's scaled by 1000/T (here 10) and back: the last bit
            // may differ.
            let (sa, sb) = (
                a.diffusion.schedule().unwrap(),
                b.diffusion.schedule().unwrap(),
            );
            for (x, y) in sa.betas.iter().zip(&sb.betas) {
                assert!((x - y).abs() <= 1e-15 * x, "{x} vs {y}");
            }
            assert_eq!(
                (a.diffusion.prediction, a.diffusion.variance),
                (b.diffusion.prediction, b.diffusion.variance)
            );
        }
    }
}

#[test]
fn what_diffusers_cannot_load_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let moons = config("moons.toml");
    run(
        dir,
        &[
            "train",
            "--config",
            s(&moons),
            "--out",
            "moons",
            "--max-steps",
            "1",
            "--quiet",
            "--device",
            "cpu",
        ],
        0,
    );
    let (_, e) = run(
        dir,
        &["export", "moons/latest.safetensors", "--out", "m"],
        1,
    );
    assert!(
        e.contains("cannot export") && e.contains("vector data"),
        "{e}"
    );
    let run_dir = train_tiny(dir, "tiny", 1, &[]);
    let ckpt = run_dir.join("latest.safetensors");
    std::fs::create_dir(dir.join("full")).unwrap();
    std::fs::write(dir.join("full/notes.txt"), "keep").unwrap();
    let (_, e) = run(dir, &["export", s(&ckpt), "--out", "full"], 1);
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join("full/notes.txt")).unwrap(),
        "keep"
    );
    // A folder diffusers wrote with a field ddpm cannot honour.
    let bad = dir.join("bad");
    std::fs::create_dir(&bad).unwrap();
    let unet = fixture("scale_shift_unet");
    let text = std::fs::read_to_string(unet.join("config.json")).unwrap();
    std::fs::write(
        bad.join("config.json"),
        text.replace("\"positional\"", "\"fourier\""),
    )
    .unwrap();
    let (_, e) = run(dir, &["import", s(&bad), "--out", "b.safetensors"], 1);
    assert!(e.contains("time_embedding_type = \"fourier\""), "{e}");
    assert!(!dir.join("b.safetensors").exists());
    let (_, e) = run(dir, &["import", s(dir), "--out", "b.safetensors"], 1);
    assert!(e.contains("neither model_index.json"), "{e}");
}

/// --noise: x_T with the ancestral sampler's later draws runs; the wrong count or shape is
/// refused naming the flag.
#[test]
fn given_noise_is_checked_and_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 1, &[]);
    let ckpt = run_dir.join("latest.safetensors");
    let write = |name: &str, dims: &[usize]| {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0)
            .collect();
        let t = Tensor::from_vec(v, dims, &Device::Cpu).unwrap();
        std::fs::write(dir.join(name), encode_npy(&t).unwrap()).unwrap();
    };
    write("steps.npy", &[5, 2, 1, 8, 8]);
    write("short.npy", &[4, 2, 1, 8, 8]);
    write("flat.npy", &[2, 64]);
    let base = |noise: &str| {
        vec![
            "sample".to_string(),
            "--checkpoint".into(),
            s(&ckpt).into(),
            "--noise".into(),
            noise.into(),
            "-n".into(),
            "2".into(),
            "--sampler".into(),
            "ddpm".into(),
            "--steps".into(),
            "5".into(),
            "--format".into(),
            "npy".into(),
            "--out".into(),
            "-".into(),
        ]
    };
    let go = |noise: &str, code| {
        let args = base(noise);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(dir, &args, code)
    };
    let (a, _) = go("steps.npy", 0);
    let (b, _) = go("steps.npy", 0);
    assert_eq!(a, b);
    assert_eq!(npy_values(&a).len(), 2 * 64);
    let (_, e) = go("short.npy", 1);
    assert!(e.contains("asks for more"), "{e}");
    let (_, e) = go("flat.npy", 1);
    assert!(
        e.contains("--noise flat.npy") && e.contains("(N, C, H, W)"),
        "{e}"
    );
    let mut args = base("steps.npy");
    args[6] = "3".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, e) = run(dir, &args, 1);
    assert!(e.contains("pass -n 2"), "{e}");
    // Under torchrun each of two ranks takes its own row of x_T and of every later draw:
    // together they write the PNGs one process writes, byte for byte (ranks write PNGs only).
    let to_dir = |out: &str| {
        let mut args = base("steps.npy");
        args.truncate(11);
        args.extend([
            "--out-dir".into(),
            out.into(),
            "--device".into(),
            "cpu".into(),
        ]);
        args
    };
    let (one, two) = (to_dir("one"), to_dir("two"));
    let (one, two): (Vec<&str>, Vec<&str>) = (
        one.iter().map(String::as_str).collect(),
        two.iter().map(String::as_str).collect(),
    );
    run(dir, &one, 0);
    for rank in ["0", "1"] {
        let out = common::ddpm(dir, &two)
            .env("RANK", rank)
            .env("LOCAL_RANK", rank)
            .env("WORLD_SIZE", "2")
            .env("LOCAL_WORLD_SIZE", "2")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files = |d: &str| {
        let mut v: Vec<(PathBuf, Vec<u8>)> = walk(&dir.join(d))
            .into_iter()
            .map(|p| (p.file_name().unwrap().into(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(files("one").len(), 2);
    assert_eq!(files("one"), files("two"));
}

/// The import and export commands of README.md ("Using diffusers models") and of `ddpm import
/// --help` / `ddpm export --help`, as written, on tiny stand-ins: the tf_pipeline fixture for
/// google/ddpm-cifar10-32, the scale_shift_unet fixture for `my-unet`, a 2-step tiny run for
/// runs/digits and C.
#[test]
fn readme_and_help_interop_commands_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let copy = |from: &Path, to: &Path| {
        for entry in walk(from) {
            let rel = entry.strip_prefix(from).unwrap();
            let dest = to.join(rel);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&entry, dest).unwrap();
        }
    };
    copy(&fixture("tf_pipeline"), &dir.join("ddpm-cifar10-32"));
    copy(&fixture("scale_shift_unet"), &dir.join("my-unet"));
    let run_dir = train_tiny(dir, "runs/digits", 2, &[]);
    std::fs::copy(run_dir.join("latest.safetensors"), dir.join("C")).unwrap();
    let lines = [
        // README
        "import ddpm-cifar10-32 --out cifar10.safetensors",
        "sample --checkpoint cifar10.safetensors -n 16 --sampler ddim --steps 50 --grid --out cifar10.png",
        "sample --checkpoint cifar10.safetensors -n 4 --steps 1000 --out-dir ancestral",
        "export runs/digits/latest.safetensors --out digits-diffusers",
        // ddpm import --help
        "sample --checkpoint cifar10.safetensors -n 16 --sampler ddim --steps 50 --grid --out c.png",
        "import my-unet --scheduler my-unet/scheduler_config.json --out mine.safetensors",
        // ddpm export --help (the first is README's)
        "export C --out raw-weights --no-ema",
    ];
    for line in lines {
        let args: Vec<&str> = line.split(' ').collect();
        run(dir, &args, 0);
    }
    assert!(dir.join("cifar10.png").is_file() && dir.join("ancestral/sample-00003.png").is_file());
    for folder in ["digits-diffusers", "raw-weights"] {
        assert!(dir.join(folder).join("model_index.json").is_file());
    }
    // The help texts show these very lines.
    for (cmd, shown) in [("import", [0, 4, 5]), ("export", [3, 6, 6])] {
        let (out, _) = run(dir, &[cmd, "--help"], 0);
        let help = String::from_utf8(out).unwrap();
        for i in shown {
            let want = format!("ddpm {}", lines[i]);
            assert!(
                help.contains(&want),
                "`ddpm {cmd} --help` lacks `{want}`:\n{help}"
            );
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
