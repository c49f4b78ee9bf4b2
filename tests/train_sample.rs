//! End to end: train the tiny config, sample from its checkpoint in every output mode, resume
//! exactly, and stop cleanly on SIGINT.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{config, run, train_tiny};

fn read_png(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png).expect("valid PNG")
}

#[test]
fn train_then_sample_to_a_folder_a_grid_and_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 12, &[]);
    for f in ["config.toml", "metrics.csv", "latest.safetensors"] {
        assert!(run_dir.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = metrics.lines().collect();
    assert_eq!(rows[0], "step,loss,lr,grad_norm,images_per_sec,elapsed_s");
    // log_every = 5: rows at 5, 10 and the final 12.
    let steps: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r.split(',').next().unwrap())
        .collect();
    assert_eq!(steps, ["5", "10", "12"]);

    let ckpt = run_dir.join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    // A folder of PNGs of the right size and channels; stdout lists them.
    let (out, _) = run(
        dir,
        &[
            "sample",
            "--checkpoint",
            ckpt,
            "-n",
            "5",
            "--batch-size",
            "2",
            "--out-dir",
            "imgs",
            "--device",
            "cpu",
            "--quiet",
        ],
        0,
    );
    let listed: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(listed.len(), 5);
    for p in &listed {
        let img = image::open(dir.join(p)).unwrap();
        assert_eq!((img.width(), img.height()), (8, 8));
        assert_eq!(img.color(), image::ColorType::L8);
    }
    // --out - gives one valid PNG (a grid of the 4 images, upscaled) and nothing else.
    let (png, _) = run(
        dir,
        &[
            "sample",
            "--checkpoint",
            ckpt,
            "-n",
            "4",
            "--out",
            "-",
            "--scale",
            "2",
            "--quiet",
            "--device",
            "cpu",
        ],
        0,
    );
    let grid = read_png(&png);
    assert!(grid.width() >= 2 * 8 * 2 && grid.height() >= 2 * 8 * 2);
    // --format npy on stdout: a valid .npy of shape (3, 1, 8, 8) float32 in [-1, 1].
    let (npy, _) = run(
        dir,
        &[
            "sample",
            "--checkpoint",
            ckpt,
            "-n",
            "3",
            "--format",
            "npy",
            "--out",
            "-",
            "--quiet",
            "--device",
            "cpu",
        ],
        0,
    );
    assert_eq!(&npy[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("(3, 1, 8, 8)"),
        "{header}"
    );
    let data = &npy[10 + header_len..];
    assert_eq!(data.len(), 3 * 64 * 4);
    for c in data.chunks_exact(4) {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        assert!((-1.0..=1.0).contains(&v), "{v}");
    }
}

#[test]
fn sample_i_does_not_depend_on_batch_size_or_split() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 4, &[]);
    let ckpt = run_dir.join("latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let npy = |extra: &[&str]| {
        let mut a = vec![
            "sample",
            "--checkpoint",
            ckpt,
            "--format",
            "npy",
            "--out",
            "-",
            "--quiet",
            "--device",
            "cpu",
            "--seed",
            "9",
        ];
        a.extend_from_slice(extra);
        run(dir, &a, 0).0
    };
    let all = npy(&["-n", "4", "--batch-size", "4"]);
    let batched = npy(&["-n", "4", "--batch-size", "3"]);
    let last = npy(&["-n", "1", "--first-index", "3"]);
    let body = |b: &[u8]| {
        let h = u16::from_le_bytes([b[8], b[9]]) as usize;
        b[10 + h..].to_vec()
    };
    assert_eq!(body(&all), body(&batched));
    assert_eq!(body(&all)[3 * 256..], body(&last)[..]);

    // `--json` reports the network evaluations per image each sampler made in 5 steps: one a
    // step for DDPM, DDIM and DPM-Solver++(2M); predictor-corrector one more after every step
    // but the last; Heun two a step but one on the last (into sigma = 0) and on the first (from
    // t = 99, sigma = sqrt((1 - abar) / abar) ~ 150, above heun::SIGMA_MAX = 80; t = 79 is ~ 26).
    for (sampler, want) in [
        ("ddpm", 5.0),
        ("ddim", 5.0),
        ("dpm++2m", 5.0),
        ("pc", 9.0),
        ("heun", 8.0),
    ] {
        let args = [
            "sample",
            "--checkpoint",
            ckpt,
            "-n",
            "3",
            "--batch-size",
            "2",
            "--steps",
            "5",
            "--sampler",
            sampler,
            "--out",
            "x.npy",
            "--json",
            "--quiet",
            "--device",
            "cpu",
        ];
        let json = common::json_summary(&run(dir, &args, 0).0);
        assert_eq!(
            json["network_evaluations_per_image"], want,
            "{sampler}: {json}"
        );
    }
}

fn model_tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

/// Train `extra`'s run straight to 14 steps and in two goes (7, then --resume to 14): the
/// checkpoints must agree bit for bit, and the metrics read as one run.
fn assert_resume_is_exact(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let straight = train_tiny(dir, "straight", 14, extra);
    let split = train_tiny(dir, "split", 7, extra);
    train_tiny(dir, "split", 14, &[extra, &["--resume"]].concat());
    let a = model_tensors(&straight.join("latest.safetensors"));
    let b = model_tensors(&split.join("latest.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((ka, da), (kb, db)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(da == db, "{ka} differs after resume");
    }
    let m = std::fs::read_to_string(split.join("metrics.csv")).unwrap();
    let steps: Vec<&str> = m
        .lines()
        .skip(1)
        .map(|r| r.split(',').next().unwrap())
        .collect();
    assert_eq!(steps, ["5", "7", "10", "14"]);
}

#[test]
fn resuming_is_bit_identical_to_training_straight_through() {
    assert_resume_is_exact(&[]);
}

/// Label dropout draws from the step's own stream, so a conditional run resumes exactly too
/// (label_dropout 0.5 makes about half the labels null at every step).
#[test]
fn resuming_a_class_conditional_run_is_bit_identical() {
    assert_resume_is_exact(&[
        "--set",
        "data.class_labels=true",
        "--set",
        "model.num_classes=10",
        "--set",
        "train.label_dropout=0.5",
    ]);
}

/// Train the tiny config (with dropout) for 8 steps on `threads` threads, i.e. in that many
/// shards per batch; return its model tensors.
fn train_on_threads(dir: &Path, threads: &str, name: &str) -> Vec<(String, Vec<u8>)> {
    let tiny = config("tiny.toml");
    let out = dir.join(name);
    let status = common::ddpm(
        dir,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--max-steps",
            "8",
            "--quiet",
            "--set",
            "model.dropout=0.1",
        ],
    )
    .env("RAYON_NUM_THREADS", threads)
    .output()
    .unwrap();
    assert!(status.status.success(), "{threads} threads: {status:?}");
    model_tensors(&out.join("latest.safetensors"))
}

/// The batch of 16 runs in one shard per thread: 3 threads (shards of 5, 5, 6) repeat bit for
/// bit, and agree with 1 thread (one shard) to rounding: 1.2e-7 measured after 12 steps. Dropout
/// masks are drawn per example, so they do not depend on the shards (when they did, the two
/// differed by 5e-3).
#[test]
fn training_in_shards_repeats_exactly_and_matches_one_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let one = train_on_threads(dir, "1", "one");
    let three = train_on_threads(dir, "3", "three");
    assert!(
        three == train_on_threads(dir, "3", "again"),
        "3 threads twice differ"
    );
    // The whole file, header included: the metadata is written in sorted order, not in
    // safetensors' per-process HashMap order.
    let file = |run: &str| std::fs::read(dir.join(run).join("latest.safetensors")).unwrap();
    assert!(
        file("three") == file("again"),
        "the same run twice wrote different checkpoint bytes"
    );
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    for ((k, a), (_, b)) in one.iter().zip(&three) {
        let worst = floats(a)
            .iter()
            .zip(floats(b))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{k}: 1 vs 3 threads differ by {worst}");
    }
}

#[test]
fn zero_steps_write_the_initial_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(tmp.path(), "run", 0, &[]);
    let ckpt = run_dir.join("latest.safetensors");
    assert!(ckpt.exists(), "--max-steps 0 left no checkpoint");
    let (out, _) = run(tmp.path(), &["info", ckpt.to_str().unwrap()], 0);
    let info = String::from_utf8(out).unwrap();
    assert!(info.contains("# step: 0\n"), "{info}");
}

#[test]
fn sigint_saves_a_loadable_checkpoint_and_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = dir.join("run");
    let tiny = config("tiny.toml");
    let bin = assert_cmd::cargo::cargo_bin("ddpm");
    let mut child = std::process::Command::new(bin)
        .current_dir(dir)
        .args([
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            run_dir.to_str().unwrap(),
        ])
        .args([
            "--device",
            "cpu",
            "--max-steps",
            "1000000",
            "--set",
            "train.log_every=1",
            "--quiet",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way (a metrics row exists), then interrupt.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap_or_default();
        if m.lines().count() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "training never started");
        assert!(child.try_wait().unwrap().is_none(), "training exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let ckpt = run_dir.join("latest.safetensors");
    let (info, _) = run(dir, &["info", ckpt.to_str().unwrap()], 0);
    let info = String::from_utf8(info).unwrap();
    let step: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("# step: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(step >= 2, "checkpoint at step {step}");
    // And it resumes.
    train_tiny(dir, "run", step + 2, &["--resume"]);
}

/// SIGINT while sampling into a folder: the finished batches' PNGs stay (each whole, their
/// paths on stdout), the exit code is 130, and stderr says which images are done and how to
/// sample the rest.
#[test]
fn sigint_while_sampling_keeps_the_finished_images() {
    use std::io::{BufRead, BufReader, Read};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 2, &[]);
    let ckpt = run_dir.join("latest.safetensors");
    let bin = assert_cmd::cargo::cargo_bin("ddpm");
    let mut child = std::process::Command::new(bin)
        .current_dir(dir)
        .args(["sample", "--checkpoint", ckpt.to_str().unwrap()])
        .args(["-n", "1000000", "--batch-size", "2", "--first-index", "4"])
        .args(["--out-dir", "out", "--device", "cpu", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first path on stdout means the first batch is on disk; then interrupt.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.ends_with("sample-00004.png\n"), "{first:?}");
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");

    let paths: Vec<&str> = std::iter::once(first.trim_end())
        .chain(rest.lines())
        .collect();
    let kept = paths.len();
    assert!(
        kept >= 2 && kept % 2 == 0,
        "{kept} images: whole batches only"
    );
    let want = format!(
        "images 4..{} of 4..1000004 are in out; the rest: --first-index {} -n {}",
        4 + kept,
        4 + kept,
        1_000_000 - kept
    );
    assert!(stderr.contains(&want), "{stderr}\nwanted: {want}");
    for (i, p) in paths.iter().enumerate() {
        assert!(p.ends_with(&format!("sample-{:05}.png", 4 + i)), "{p}");
        let img = read_png(&std::fs::read(dir.join(p)).unwrap());
        assert_eq!((img.width(), img.height()), (8, 8), "{p}");
    }
    let mut on_disk: Vec<_> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk.len(),
        kept,
        "files besides the printed ones: {on_disk:?}"
    );
}
