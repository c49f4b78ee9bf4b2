//! The `[train]` config section: how long and how big the run is, its seed, how often it logs,
//! samples and checkpoints, and the label dropout that makes a class-conditional model also an
//! unconditional one (for classifier-free guidance). Parsing and validation only.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::precision::Precision;

/// `[train]`: how long, how big, how often to log, sample and checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Total optimizer steps; training always ends.
    pub steps: u64,
    /// Examples per optimizer step (split into `grad_accum` micro-batches).
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged per optimizer step.
    pub grad_accum: usize,
    pub precision: Precision,
    /// The one seed every random stream derives from.
    pub seed: u64,
    /// Steps between rows of metrics.csv and log lines.
    pub log_every: u64,
    /// Steps between EMA sample grids in samples/ (0 = never).
    pub sample_every: u64,
    /// Images in each sample grid.
    pub sample_count: usize,
    /// Steps between checkpoints (one is always written at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept besides latest.safetensors.
    pub keep_checkpoints: usize,
    /// Probability that a training label is replaced by the null label, so the model also
    /// learns the unconditional eps that guidance needs (Ho & Salimans 2022 use 0.1 or 0.2).
    /// Read only when data.class_labels = true.
    pub label_dropout: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 800_000,
            batch_size: 128,
            grad_accum: 1,
            precision: Precision::F32,
            seed: 0,
            log_every: 100,
            sample_every: 10_000,
            sample_count: 16,
            checkpoint_every: 10_000,
            keep_checkpoints: 3,
            label_dropout: 0.1,
        }
    }
}

impl TrainConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let positive = [
            ("train.steps", self.steps),
            ("train.batch_size", self.batch_size as u64),
            ("train.grad_accum", self.grad_accum as u64),
            ("train.log_every", self.log_every),
            ("train.checkpoint_every", self.checkpoint_every),
            ("train.sample_count", self.sample_count as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{key} must be at least 1")));
        }
        if self.batch_size % self.grad_accum != 0 {
            return Err(Error::Config(format!(
                "train.batch_size = {} is not divisible by train.grad_accum = {}",
                self.batch_size, self.grad_accum
            )));
        }
        if !(0.0..=1.0).contains(&self.label_dropout) {
            return Err(Error::Config(format!(
                "train.label_dropout = {} must be a probability in [0, 1]",
                self.label_dropout
            )));
        }
        Ok(())
    }

    /// Examples per micro-batch.
    pub fn micro_batch(&self) -> usize {
        self.batch_size / self.grad_accum
    }
}
