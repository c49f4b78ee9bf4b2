//! The run directory: `config.toml` (the resolved config), `metrics.csv` and its plot
//! `loss.png`, `samples/` and the
//! checkpoints (`ckpt-XXXXXXXX.safetensors`, the last `keep` of them, plus `latest.safetensors`).
//! Which checkpoints to keep is decided by `checkpoint::to_delete`; this module does the I/O.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::checkpoint::run_dir;
use crate::data::images;
use crate::error::{Error, Result};
use crate::plot::{self, Row};

/// The resolved config in a run directory.
pub const CONFIG_FILE: &str = "config.toml";

/// The training curves drawn from metrics.csv.
pub const LOSS_PLOT: &str = "loss.png";

/// Header of metrics.csv.
pub const METRICS_HEADER: &str = "step,loss,lr,grad_norm,images_per_sec,elapsed_s";

/// A run directory on disk.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// Open (creating it if needed) the run directory `root`.
    pub fn create(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("samples")).map_err(|e| Error::io(root, e))?;
        run_dir::remove_stale_temps(root)?;
        Ok(RunDir {
            root: root.to_path_buf(),
        })
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
        crate::atomic::write(&self.root.join(CONFIG_FILE), toml_text.as_bytes())
    }

    /// The sample grid path for `step`.
    pub fn sample_path(&self, step: u64) -> PathBuf {
        self.root
            .join("samples")
            .join(format!("step-{step:08}.png"))
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
        let path = self.root.join("metrics.csv");
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
        crate::atomic::write(&path, text.as_bytes())?;
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
