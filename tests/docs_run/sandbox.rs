//! A scratch folder where doc lines run in order: `ddpm` on PATH, configs/ copied in, and what
//! a line reads but the docs never made provided on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::extract::{binary, repo, DocLine};
use super::fid;
use super::shell::{invocations, shrink, value_of, with_ddpm};

/// A scratch folder that runs doc lines in order, with `ddpm` on PATH and configs/ copied in.
pub struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join(".bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(binary(), bin.join("ddpm")).unwrap();
        copy_dir(&repo().join("configs"), &tmp.path().join("configs"));
        Sandbox { tmp }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Make what the invocation `args` reads and the docs did not make (module comment).
    fn provide(&self, args: &[String]) {
        let at = |p: &str| self.dir().join(p);
        let subcommand = args.get(1).map(String::as_str);
        let mut checkpoints: Vec<&str> = value_of(args, &["--checkpoint", "-c"])
            .into_iter()
            .collect();
        if matches!(subcommand, Some("info" | "export")) {
            checkpoints.extend(
                args.get(2)
                    .map(String::as_str)
                    .filter(|a| !a.starts_with('-')),
            );
        }
        for ckpt in checkpoints {
            self.checkpoint(ckpt);
        }
        for flag in ["--init", "--from", "--to", "--mask"] {
            if let Some(p) = value_of(args, &[flag]).filter(|p| !at(p).exists()) {
                write_png(&at(p), flag == "--mask");
            }
        }
        if subcommand == Some("fid") {
            self.provide_fid(args);
        }
        if subcommand == Some("import") {
            // A diffusers model to import: an unconditional one of ours, exported.
            if let Some(from) = args.get(2).filter(|a| !at(a).exists()) {
                let plain = self.plain_fixture();
                let export = ["export", plain.to_str().unwrap(), "--out", from];
                crate::common::run(self.dir(), &export, 0);
            }
            if let Some(p) = value_of(args, &["--scheduler"]).filter(|p| !at(p).exists()) {
                let from = args[2].as_str();
                std::fs::copy(at(from).join("scheduler/scheduler_config.json"), at(p)).unwrap();
            }
        }
        if subcommand == Some("eval") {
            if let Some(d) = value_of(args, &["--data"]).filter(|d| *d != "digits") {
                // One image in each of ten class folders: a class-conditional checkpoint
                // reads labels from first-level subfolders.
                if !at(d).exists() {
                    for class in 0..10 {
                        write_png(&at(d).join(class.to_string()).join("a.png"), class % 2 == 1);
                    }
                }
            }
        }
    }

    /// A model at `path` (relative to the sandbox) unless there is one: points when the path
    /// names a 2-D data set, images otherwise.
    fn checkpoint(&self, path: &str) {
        let at = self.dir().join(path);
        if !at.exists() {
            let points = ["8g", "moons", "swiss", "gaussians"]
                .iter()
                .any(|p| path.contains(p));
            let fixture = self.fixture(points);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::copy(fixture, at).unwrap();
        }
    }

    /// What a `ddpm fid` invocation reads (`docs_run::fid`): the weights, a missing
    /// checkpoint, folder or array.
    fn provide_fid(&self, args: &[String]) {
        let weights = fid::weights(self.dir());
        if let Some(p) = value_of(args, &["--inception"]) {
            if !self.dir().join(p).exists() {
                std::os::unix::fs::symlink(&weights, self.dir().join(p)).unwrap();
            }
        }
        for set in fid::sets(args) {
            let at = self.dir().join(set);
            if at.exists() {
                continue;
            }
            if set.ends_with(".npz") {
                let images = self.dir().join(".fixtures/stats-images");
                fid::image_folder(&images);
                let (images, w) = (images.to_str().unwrap(), weights.to_str().unwrap());
                let args = ["fid", images, "--save-stats", set, "--inception", w];
                crate::common::run(self.dir(), &args, 0);
            } else if set.ends_with(".safetensors") {
                self.checkpoint(set);
            } else if set.ends_with(".npy") {
                let ckpt = self.fixture(false);
                let args = ["sample", "--checkpoint", ckpt.to_str().unwrap(), "-n", "3"];
                let more = ["--steps", "3", "--format", "npy", "--out", set, "--quiet"];
                crate::common::run(self.dir(), &[&args[..], &more[..]].concat(), 0);
            } else {
                fid::image_folder(&at);
            }
        }
    }

    /// An unconditional image model (configs/tiny.toml) trained one step, in .fixtures.
    fn plain_fixture(&self) -> PathBuf {
        let run = self.dir().join(".fixtures").join("plain");
        let ckpt = run.join("latest.safetensors");
        if !ckpt.exists() {
            let config = repo().join("configs").join("tiny.toml");
            let args = ["train", "--config", config.to_str().unwrap(), "--out"];
            let more = ["--max-steps", "1", "--device", "cpu", "--quiet"];
            crate::common::run(
                self.dir(),
                &[&args[..], &[run.to_str().unwrap()], &more[..]].concat(),
                0,
            );
        }
        ckpt
    }

    /// A checkpoint trained two steps in this sandbox's .fixtures: images (tiny.toml,
    /// class-conditional) or points (moons.toml).
    fn fixture(&self, points: bool) -> PathBuf {
        let (name, config, extra): (&str, &str, &[&str]) = match points {
            true => ("points", "moons.toml", &["--set", "train.batch_size=8"]),
            false => (
                "images",
                "tiny.toml",
                &[
                    "--set",
                    "data.class_labels=true",
                    "--set",
                    "model.num_classes=10",
                ],
            ),
        };
        let run = self.dir().join(".fixtures").join(name);
        let ckpt = run.join("latest.safetensors");
        if !ckpt.exists() {
            let config = repo().join("configs").join(config);
            let mut args = vec![
                "train",
                "--config",
                config.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
                "--max-steps",
                "2",
                "--device",
                "cpu",
                "--quiet",
            ];
            args.extend_from_slice(extra);
            crate::common::run(self.dir(), &args, 0);
        }
        ckpt
    }

    /// Run `line` (shrunk) with bash; panics, naming the line, unless it succeeds.
    pub fn run(&self, line: &DocLine) {
        let words = with_ddpm(&line.text);
        let mut shrunk = Vec::new();
        let mut last = 0;
        for (start, end) in invocations(&words) {
            shrunk.extend_from_slice(&words[last..start]);
            let args = shrink(&words[start..end]);
            self.provide(&args);
            shrunk.extend(args);
            last = end;
        }
        shrunk.extend_from_slice(&words[last..]);
        // HOME is the sandbox, and a file a line writes under ~ gets its folders there (a
        // completion script into ~/.local/share/..., say), never into the real home.
        for pair in shrunk.windows(2).filter(|w| w[0] == ">") {
            if let Some(rest) = pair[1].strip_prefix("~/") {
                let target = self.dir().join(rest);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            }
        }
        let script = shrunk.join(" ");
        if script.contains("python3") && script.contains("numpy") && !has_numpy() {
            let required = std::env::var("DDPM_DOCS_NUMPY").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{}: {}: python3 has no numpy (DDPM_DOCS_NUMPY=1)",
                line.source, line.text
            );
            eprintln!(
                "skipped (python3 has no numpy): {}: {}",
                line.source, line.text
            );
            return;
        }
        let path = format!(
            "{}:{}",
            self.dir().join(".bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", &script])
            .current_dir(self.dir())
            .env("PATH", path)
            .env("HOME", self.dir())
            .env("DDPM_INCEPTION", self.dir().join(fid::WEIGHTS))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "{}: `{}` failed ({:?}), run as `{script}`:\n{stderr}",
            line.source,
            line.text,
            out.status.code()
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.path().extension().is_some_and(|e| e == "toml") {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// An 8x8 grey PNG at `path`: a ramp, or a mask white on its left half.
fn write_png(path: &Path, mask: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(8, 8, |x, y| match mask {
        true => image::Luma([if x < 4 { 255 } else { 0 }]),
        false => image::Luma([(x * 29 + y * 13) as u8]),
    })
    .save(path)
    .unwrap();
}

fn has_numpy() -> bool {
    Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}
