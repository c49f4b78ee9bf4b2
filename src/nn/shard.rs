//! Data parallelism on the CPU: a batch cut into shards of consecutive examples, one per
//! thread, each computed start to finish on its own thread (the training loss and its
//! backward pass, a sampling forward pass, or the likelihood ODE of its examples) with the
//! kernels inside it single-threaded.
//!
//! On a small model the ops of one batch are too short to split well across threads: candle's
//! backward is serial bookkeeping between ops, and every parallel op ends in a barrier. W3
//! (train, 1x16x16, batch 64) with parallel kernels ran only 1.1-1.6x faster on 2 threads than
//! on 1; as two shards of 32 it runs 1.5-1.7x faster than on 1 thread, its best step is
//! ~108 ms against ~120 ms, and its ratio to PyTorch in the side-by-side comparison rose from
//! 1.13x to 1.39x-1.54x (README, CPU performance).
//! Sharding applies where candle's own CPU pool is off (`configure_cpu`, which the binary
//! calls), since that pool's workers would compete with the shards for the cores.
//!
//! Shard k of a batch of n over s shards holds examples k n / s .. (k + 1) n / s. The
//! gradient of the batch mean loss is the size-weighted sum of the shards' mean-loss
//! gradients, sum_k (n_k / n) g_k, added in shard order, so a run is reproducible bit for bit
//! for a given thread count; a different thread count changes the shards and so the rounding
//! (examples draw their own random numbers, so nothing else changes).

use std::ops::Range;

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::nn::kernels;

/// Shards for a batch of `batch` examples on `device`: one per thread of the pool (at most one
/// per example) on the CPU with candle's pool off, else 1 (one piece, parallel kernels).
pub fn count(batch: usize, device: &Device) -> usize {
    if !device.is_cpu() || kernels::is_serial() || candle_pool_on() {
        return 1;
    }
    kernels::threads().clamp(1, batch.max(1))
}

/// Whether candle's own CPU pool has workers (CANDLE_NUM_THREADS > 1, or unset without
/// `configure_cpu`).
fn candle_pool_on() -> bool {
    candle_core::utils::barrier_pool().n_workers() > 0
}

/// The example ranges of `shards` shards of a batch of `batch`: k n / s .. (k + 1) n / s.
pub fn ranges(batch: usize, shards: usize) -> Vec<Range<usize>> {
    let s = shards.max(1);
    (0..s).map(|k| k * batch / s..(k + 1) * batch / s).collect()
}

/// Run `f(k, examples)` for every shard of `ranges`, each on its own thread with serial
/// kernels (one shard: on this thread, kernels parallel); results in shard order.
pub fn run<R: Send>(
    ranges: &[Range<usize>],
    f: impl Fn(usize, Range<usize>) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    run_reporting(ranges, &mut |_, _| Ok(()), |k, r, _| f(k, r))
}

/// Progress of a shard's work: (steps done, steps in all).
pub type Report<'a> = &'a mut dyn FnMut(usize, usize) -> Result<()>;

/// As `run`, with progress: shard 0 runs on the calling thread and reports through `report`
/// (every shard takes the same steps); the others get a report that does nothing.
pub fn run_reporting<R: Send>(
    ranges: &[Range<usize>],
    report: Report,
    f: impl Fn(usize, Range<usize>, Report) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let f = &f;
    kernels::shards(
        ranges.len(),
        || f(0, ranges[0].clone(), report),
        |k| f(k, ranges[k].clone(), &mut |_, _| Ok(())),
    )
    .into_iter()
    .collect()
}

/// A per-example map over a batch (`x` (B, ...), one timestep and optional label per example)
/// computed in `shards` shards (`count` for the batch, or a given number) and concatenated
/// along the batch: the same values as one call on the whole batch, up to rounding where a
/// kernel's blocking depends on the batch size.
pub fn map_batch(
    x: &Tensor,
    t: &[usize],
    labels: Option<&[u32]>,
    shards: usize,
    f: impl Fn(&Tensor, &[usize], Option<&[u32]>) -> Result<Tensor> + Sync,
) -> Result<Tensor> {
    let b = x.dim(0)?;
    if shards <= 1 || b <= 1 {
        return f(x, t, labels);
    }
    let parts = run(&ranges(b, shards.min(b)), |_, r| {
        let labels = labels.map(|l| &l[r.clone()]);
        f(&x.narrow(0, r.start, r.len())?, &t[r.clone()], labels)
    })?;
    Ok(Tensor::cat(&parts, 0)?)
}

#[cfg(test)]
mod tests;
