//! The run directory: `config.toml` (the resolved config), `metrics.csv` and its plot
//! `loss.png`, `samples/`, the checkpoints (`ckpt-XXXXXXXX.safetensors`, the last `keep` of
//! them, plus `latest.safetensors`) and `ddpm.lock`, which makes the directory one training's at
//! a time. Which checkpoints to keep is decided by `checkpoint::to_delete`; this module does the
//! I/O.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::atomic;
use crate::checkpoint::{run_dir, Checkpoint};
use crate::data::images;
use crate::error::{Error, Result};
use crate::plot::{self, Row};

/// The training curves drawn from metrics.csv.
pub const LOSS_PLOT: &str = "loss.png";

/// Header of metrics.csv.
pub const METRICS_HEADER: &str = "step,loss,lr,grad_norm,images_per_sec,elapsed_s";

/// The lock file: `flock`ed exclusively by the training that has the directory, and holding
/// its process id for the message a second one gets. The kernel drops the lock when the
/// process ends, however it ends, so a crash leaves no stale lock (the file itself stays).
pub const LOCK: &str = "ddpm.lock";

/// The resolved config.
pub const CONFIG: &str = "config.toml";
const METRICS: &str = "metrics.csv";
const SAMPLES: &str = "samples";

/// A run directory on disk, owned (locked) by this process for as long as the value lives.
#[derive(Debug)]
pub struct RunDir {
    pub root: PathBuf,
    /// Open for the lock's sake; closing it (drop, or the process's death) unlocks.
    _lock: File,
}

impl RunDir {
    /// Take the run directory `root` for one training: create it (a fresh run; `resume`
    /// needs it to exist and creates nothing), lock it, so that a second training on it fails
    /// at once with the holder's process id and changes nothing, then, owning it, delete the
    /// temp files of crashed writes and create `samples/`.
    pub fn open(root: &Path, resume: bool) -> Result<Self> {
        if resume {
            match fs::metadata(root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "--resume: {} is not a folder",
                        root.display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::Invalid(format!(
                        "--resume: {} does not exist; there is no run to resume",
                        root.display()
                    )))
                }
                Err(e) => return Err(Error::io(root, e)),
            }
        } else {
            atomic::create_dir(root)?;
        }
        let lock = lock(root)?;
        remove_stale_temps(root)?;
        atomic::create_dir(&root.join(SAMPLES))?;
        Ok(RunDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The checkpoint to resume from: the newest that loads (see
    /// `checkpoint::run_dir::load_newest`), with the errors of newer ones passed over; an error
    /// naming the directory when it holds none. `latest` is pointed at it, finishing a save
    /// that a crash cut short between writing `ckpt-N` and linking `latest`.
    pub fn resume_checkpoint(&self) -> Result<(Checkpoint, Vec<Error>)> {
        let (ckpt, passed_over) = run_dir::load_newest(&self.root)?.ok_or_else(|| {
            Error::Invalid(format!(
                "--resume: {} has no checkpoint to resume from; start it without --resume",
                self.root.display()
            ))
        })?;
        run_dir::link_latest(&self.root, &ckpt.path)?;
        Ok((ckpt, passed_over))
    }

    /// `latest.safetensors`.
    pub fn latest(&self) -> PathBuf {
        self.root.join(run_dir::LATEST)
    }

    /// True when the directory already holds checkpoints of a run.
    pub fn has_checkpoints(&self) -> Result<bool> {
        Ok(self.latest().exists() || !run_dir::list_checkpoints(&self.root)?.is_empty())
    }

    /// Write the resolved config as `config.toml` (atomically).
    pub fn write_config(&self, toml_text: &str) -> Result<()> {
        atomic::write(&self.root.join(CONFIG), toml_text.as_bytes())
    }

    /// The sample grid path for `step`.
    pub fn sample_path(&self, step: u64) -> PathBuf {
        self.root.join(SAMPLES).join(format!("step-{step:08}.png"))
    }

    /// Save the checkpoint of `step`, point `latest` at it, and delete what the retention
    /// policy (`checkpoint::run_dir::to_delete`) lets go.
    pub fn save_checkpoint(
        &self,
        step: u64,
        keep: usize,
        tensors: &[(String, Tensor)],
        metadata: &BTreeMap<String, String>,
    ) -> Result<PathBuf> {
        run_dir::save_step(&self.root, step, tensors, metadata, keep)
    }

    /// metrics.csv opened for appending; rows after `resume_step` (written after the checkpoint
    /// a run resumes from) are dropped so the file reads as one uninterrupted run.
    pub fn metrics(&self, resume_step: u64) -> Result<Metrics> {
        let path = self.root.join(METRICS);
        let mut keep: Vec<String> = Vec::new();
        let mut rows = Vec::new();
        if resume_step > 0 && path.exists() {
            let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| Error::io(&path, e))?;
                let step = line.split(',').next().and_then(|s| s.parse::<u64>().ok());
                if matches!(step, Some(s) if s <= resume_step) {
                    rows.extend(parse_row(&line));
                    keep.push(line);
                }
            }
        }
        let mut text = format!("{METRICS_HEADER}\n");
        for l in keep {
            text.push_str(&l);
            text.push('\n');
        }
        atomic::write(&path, text.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Metrics {
            path,
            file,
            rows,
            plot: self.root.join(LOSS_PLOT),
        })
    }
}

/// Lock `root` (see `LOCK`) and record our process id in the lock file.
fn lock(root: &Path) -> Result<File> {
    let path = root.join(LOCK);
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    let mut file = o.open(&path).map_err(|e| Error::io(&path, e))?;
    if !try_lock(&file).map_err(|e| Error::io(&path, e))? {
        let mut holder = String::new();
        // The holder writes its id just after locking; a reader that comes in between
        // finds the file empty.
        let _ = file.read_to_string(&mut holder);
        let by = match holder.trim().parse::<u32>() {
            Ok(pid) => format!("process {pid}"),
            Err(_) => "another process".to_string(),
        };
        return Err(Error::Invalid(format!(
            "run directory {} is in use by {by}; wait for it to finish or choose another --out",
            root.display()
        )));
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

/// Take the exclusive lock without waiting: false when another open file holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Elsewhere the directory is not locked (ddpm is built and tested on unix).
#[cfg(not(unix))]
fn try_lock(_: &File) -> io::Result<bool> {
    Ok(true)
}

/// Delete the temp files that crashed writes left: checkpoints and `latest`
/// (`checkpoint::run_dir::remove_stale_temps`), config.toml, metrics.csv, loss.png and sample
/// grids.
/// Only with the lock held: a running training's temp files look just the same.
fn remove_stale_temps(root: &Path) -> Result<()> {
    run_dir::remove_stale_temps(root)?;
    let ours = |dir: &Path, target: &str| {
        if dir == root {
            target == CONFIG || target == METRICS || target == LOSS_PLOT
        } else {
            target.starts_with("step-") && target.ends_with(".png")
        }
    };
    for dir in [root.to_path_buf(), root.join(SAMPLES)] {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name();
            let stale = name
                .to_str()
                .and_then(atomic::temp_target)
                .is_some_and(|t| ours(&dir, t));
            if stale {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    Ok(())
}

/// The (step, loss, lr, grad_norm) of a metrics.csv row; None for the header or a bad line.
fn parse_row(line: &str) -> Option<Row> {
    let cols: Vec<&str> = line.split(',').collect();
    let num = |i: usize| cols.get(i).and_then(|c| c.parse::<f64>().ok());
    Some(Row {
        step: cols.first()?.parse().ok()?,
        loss: num(1)?,
        lr: num(2)?,
        grad_norm: num(3)?,
    })
}

/// metrics.csv, appended to row by row (each row is flushed, so a crash loses none), and
/// loss.png, redrawn from all rows after each.
pub struct Metrics {
    path: PathBuf,
    file: File,
    rows: Vec<Row>,
    plot: PathBuf,
}

impl Metrics {
    /// Append one row.
    pub fn row(
        &mut self,
        step: u64,
        loss: f32,
        lr: f64,
        grad_norm: f64,
        images_per_sec: f64,
        elapsed_s: f64,
    ) -> Result<()> {
        writeln!(
            self.file,
            "{step},{loss:.6},{lr:.6e},{grad_norm:.4},{images_per_sec:.2},{elapsed_s:.2}"
        )
        .and_then(|_| self.file.flush())
        .map_err(|e| Error::io(&self.path, e))?;
        self.rows.push(Row {
            step,
            loss: loss as f64,
            lr,
            grad_norm,
        });
        let img = plot::training_curves(&self.rows)?;
        images::save_png(&image::DynamicImage::ImageRgb8(img), &self.plot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_is_one_trainings_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let first = RunDir::open(&root, false).unwrap();
        assert_eq!(
            fs::read_to_string(root.join(LOCK)).unwrap(),
            format!("{}\n", std::process::id())
        );
        // The temp files of the first one's writes in progress, and a file that is not ours.
        let in_progress = [
            root.join(".ckpt-00000007.safetensors.4242.tmp"),
            root.join(".latest.safetensors.4242.tmp"),
            root.join(".config.toml.4242.tmp"),
            root.join(".metrics.csv.4242.tmp"),
            root.join(".loss.png.4242.tmp"),
            root.join("samples/.step-00000007.png.4242.tmp"),
        ];
        let notes = root.join(".notes.txt.4242.tmp");
        for p in in_progress.iter().chain([&notes]) {
            fs::write(p, b"half").unwrap();
        }
        // A second one (the lock is per open file, so this process counts as another) is
        // refused, whether fresh or resuming, and deletes nothing.
        for resume in [false, true] {
            let e = RunDir::open(&root, resume).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "run directory {} is in use by process {}; wait for it to finish or choose another --out",
                    root.display(),
                    std::process::id()
                )
            );
        }
        assert!(in_progress.iter().all(|p| p.exists()));

        // Once the first lets go, the next one takes it and clears what crashed writes left.
        drop(first);
        let _second = RunDir::open(&root, true).unwrap();
        assert!(in_progress.iter().all(|p| !p.exists()));
        assert!(notes.exists());
    }

    #[test]
    fn resuming_a_missing_folder_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("missing");
        let e = RunDir::open(&root, true).unwrap_err().to_string();
        assert!(e.contains("missing does not exist"), "{e}");
        assert!(!root.exists());
        fs::write(&root, b"").unwrap();
        let e = RunDir::open(&root, true).unwrap_err().to_string();
        assert!(e.contains("missing is not a folder"), "{e}");

        let run = RunDir::open(&tmp.path().join("empty"), false).unwrap();
        let e = run.resume_checkpoint().unwrap_err().to_string();
        assert!(e.contains("no checkpoint to resume from"), "{e}");
    }
}
