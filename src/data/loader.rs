//! Batches off the caller's thread: worker w builds batches start + w, start + w + W, ... (the
//! plan comes from `order`, so contents depend only on the step, never on the worker count)
//! and queues them in its own bounded channel; the consumer reads the channels round-robin,
//! so batches arrive in step order with about `prefetch` of them ready ahead. Errors travel
//! through the channel; dropping the loader stops and joins the workers.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};

use super::config::DataConfig;
use super::order::Order;
use super::Dataset;
use crate::error::{Error, Result};

/// One training batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// B*C*H*W values in [-1, 1] (images) or B*D standardised values (vectors), example-major,
    /// CHW within an image.
    pub x: Vec<f32>,
    /// One label per example when the dataset has labels.
    pub labels: Option<Vec<u32>>,
    /// The training step this batch belongs to.
    pub step: u64,
    /// (B, C, H, W) or (B, D).
    pub dims: Vec<usize>,
}

impl Batch {
    /// x as a (B, C, H, W) f32 tensor and the labels as a (B,) u32 tensor, on `device`.
    pub fn into_tensors(self, device: &Device) -> Result<(Tensor, Option<Tensor>)> {
        let b = self.dims[0];
        let x = Tensor::from_vec(self.x, self.dims.to_vec(), device)?;
        let labels = match self.labels {
            Some(l) => Some(Tensor::from_vec(l, b, device)?),
            None => None,
        };
        Ok((x, labels))
    }
}

/// The examples of every batch a loader builds: part `index` of `count` (rank r of a
/// data-parallel run of W ranks builds part r of W of each global batch, and nothing else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    /// The whole batch.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// Examples index B / count .. (index + 1) B / count of a batch of B.
    pub fn range(self, batch: usize) -> Range<usize> {
        let count = self.count.max(1);
        self.index * batch / count..(self.index + 1) * batch / count
    }
}

/// How a `Loader` batches a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    /// The global batch size; each batch holds `part` of it.
    pub batch_size: usize,
    pub seed: u64,
    pub random_flip: bool,
    /// The first step to yield; a loader started at s yields what a fresh one yields from s.
    pub start_step: u64,
    /// Worker threads (at least one is used).
    pub workers: usize,
    /// Batches queued ahead, across all workers (at least one per worker).
    pub prefetch: usize,
    /// Which examples of each batch to build.
    pub part: Part,
}

impl LoaderOptions {
    /// Batches of `batch_size` from step 0, no flips, 2 workers, 4 batches ahead.
    pub fn new(batch_size: usize, seed: u64) -> Self {
        LoaderOptions {
            batch_size,
            seed,
            random_flip: false,
            start_step: 0,
            workers: 2,
            prefetch: 4,
            part: Part::WHOLE,
        }
    }

    /// Flip, worker and prefetch settings from the `[data]` section.
    pub fn from_config(cfg: &DataConfig, batch_size: usize, seed: u64, start_step: u64) -> Self {
        LoaderOptions {
            batch_size,
            seed,
            random_flip: cfg.random_flip,
            start_step,
            workers: cfg.workers,
            prefetch: cfg.prefetch,
            part: Part::WHOLE,
        }
    }
}

/// An endless, seeded, resumable stream of batches decoded on worker threads.
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    start_step: u64,
    next_step: u64,
    dims: Vec<usize>,
    failed: bool,
}

impl Loader {
    /// Start the workers; the first batch is step `opts.start_step`.
    pub fn new(dataset: Arc<dyn Dataset>, opts: LoaderOptions) -> Result<Self> {
        let examples = opts.part.range(opts.batch_size);
        if examples.is_empty() {
            return Err(Error::Invalid(format!(
                "batch size {} leaves part {} of {} empty; it must be at least 1 per part",
                opts.batch_size, opts.part.index, opts.part.count
            )));
        }
        if dataset.is_empty() {
            return Err(Error::Data("the dataset has no examples".into()));
        }
        let mut dims = vec![examples.len()];
        dims.extend(dataset.example_shape());
        let workers = opts.workers.max(1);
        let depth = opts.prefetch.div_ceil(workers).max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut loader = Loader {
            receivers: Vec::with_capacity(workers),
            handles: Vec::with_capacity(workers),
            stop: stop.clone(),
            start_step: opts.start_step,
            next_step: opts.start_step,
            dims: dims.clone(),
            failed: false,
        };
        for w in 0..workers {
            let (tx, rx) = sync_channel(depth);
            let job = Worker {
                dataset: dataset.clone(),
                order: Order::new(dataset.len(), opts.batch_size, opts.seed, opts.random_flip),
                dims: dims.clone(),
                examples: examples.clone(),
                step: opts.start_step + w as u64,
                stride: workers as u64,
                tx,
                stop: stop.clone(),
            };
            // On failure `loader` is dropped here, which stops the workers already started.
            let handle = std::thread::Builder::new()
                .name(format!("ddpm-data-{w}"))
                .spawn(move || job.run())
                .map_err(|e| {
                    Error::Data(format!(
                        "cannot start data loader thread {} of {workers} (data.workers): {e}; lower data.workers",
                        w + 1
                    ))
                })?;
            loader.receivers.push(rx);
            loader.handles.push(handle);
        }
        Ok(loader)
    }

    /// (B, C, H, W) or (B, D) of every batch (B: the examples of this loader's part).
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The step of the next batch `next()` returns.
    pub fn step(&self) -> u64 {
        self.next_step
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    /// The next batch in step order; after an error the loader is finished.
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.failed {
            return None;
        }
        let w = ((self.next_step - self.start_step) % self.receivers.len() as u64) as usize;
        let got = self.receivers[w].recv().unwrap_or_else(|_| {
            Err(Error::Data(format!(
                "data loader worker {w} stopped unexpectedly before step {}",
                self.next_step
            )))
        });
        match &got {
            Ok(_) => self.next_step += 1,
            Err(_) => self.failed = true,
        }
        Some(got)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes a worker blocked on a full channel return at once.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// One worker's share: steps `step`, `step + stride`, ...
struct Worker {
    dataset: Arc<dyn Dataset>,
    order: Order,
    dims: Vec<usize>,
    /// The examples of each batch this worker builds (`Part::range`).
    examples: Range<usize>,
    step: u64,
    stride: u64,
    tx: SyncSender<Result<Batch>>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let batch = self.build();
            let failed = batch.is_err();
            if self.tx.send(batch).is_err() || failed {
                return;
            }
            self.step += self.stride;
        }
    }

    fn build(&mut self) -> Result<Batch> {
        let b = self.dims[0];
        let per: usize = self.dims[1..].iter().product();
        let mut x = vec![0f32; b * per];
        let mut labels = self.dataset.num_classes().map(|_| Vec::with_capacity(b));
        let plan = self.order.batch(self.step);
        for (&(i, flip), out) in plan[self.examples.clone()]
            .iter()
            .zip(x.chunks_exact_mut(per))
        {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::Data("data loader stopped".into()));
            }
            let label = self.dataset.example(i, flip, out)?;
            if let Some(labels) = labels.as_mut() {
                labels.push(label.ok_or_else(|| {
                    Error::Data(format!(
                        "example {i} has no label but the dataset has classes"
                    ))
                })?);
            }
        }
        Ok(Batch {
            x,
            labels,
            step: self.step,
            dims: self.dims.clone(),
        })
    }
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
