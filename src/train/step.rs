//! One optimizer step, free of I/O: draw timesteps and noise from the step's streams, noise the
//! batch with q(x_t | x0), run the network, take the loss and its gradients (averaged over the
//! micro-batches, each computed in shards side by side on the CPU: `crate::nn::shard`), clip, update
//! AdamW and the EMA. Class labels, when the data has them, are first replaced by the null label
//! with probability train.label_dropout. Everything random is keyed by the step number, so a run
//! resumed at step s does exactly what an uninterrupted run does at step s.
//!
//! One rank of a data-parallel run (`crate::dist`) computes its part of every micro-batch
//! (`data::Part`: rank r of W takes examples r n / W .. (r + 1) n / W) with the draws those
//! examples get in one process, and the ranks' gradients are added in rank order
//! (`dist::OrderedSum`): W ranks of one thread compute what one process with W threads computes,
//! bit for bit. A launched world of one goes through the same exchange and computes what no
//! launcher does, except in the rounding when both train.grad_accum > 1 and the rank runs
//! several shards (it adds its shards per micro-batch first).

use candle_core::{DType, Tensor};

use crate::config::Config;
use crate::data::{Batch, Part};
use crate::diffusion::q_sample;
use crate::dist::{Comm, OrderedSum};
use crate::error::{Error, Result};
use crate::guidance::drop_labels;
use crate::loss::training_losses;
use crate::model::Network;
use crate::nn::shard;
use crate::optim::lr_at;
use crate::rng::{Purpose, Stream};
use crate::schedule::Schedule;

use super::state::TrainState;

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean loss over the micro-batches.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// The random draws of step `step`: one stream per purpose, continued across micro-batches.
struct StepStreams {
    timesteps: Stream,
    noise: Stream,
    dropout: Stream,
    labels: Stream,
}

impl StepStreams {
    fn new(seed: u64, step: u64) -> Self {
        StepStreams {
            timesteps: Stream::new(seed, Purpose::Timesteps, step),
            noise: Stream::new(seed, Purpose::TrainNoise, step),
            dropout: Stream::new(seed, Purpose::Dropout, step),
            labels: Stream::new(seed, Purpose::Labels, step),
        }
    }
}

/// Run optimizer step `state.step` on `micro_batches` (train.grad_accum of them; this rank's
/// part of each when `world` has several ranks) and advance.
pub fn train_step(
    cfg: &Config,
    schedule: &Schedule,
    state: &mut TrainState,
    micro_batches: Vec<Batch>,
    world: &dyn Comm,
) -> Result<StepStats> {
    let step = state.step;
    let device = state.device.clone();
    let mut streams = StepStreams::new(cfg.train.seed, step);
    let mut acc = state.optimizer.accumulator();
    // Ranks exchange each micro-batch's gradients; one process keeps adding into `acc`.
    let mut ranks = world.exchanges().then(|| {
        let shapes = acc.params().iter().map(|p| p.shape().clone()).collect();
        OrderedSum::new(world, shapes, &device)
    });
    let part = Part {
        index: world.rank(),
        count: world.size(),
    };
    // The weighted losses of the shards, added in order; and this rank's per micro-batch.
    let mut loss_sum = 0f32;
    let mut losses = Vec::with_capacity(micro_batches.len());
    let compute_dtype = cfg.train.precision.dtype();
    let net = state.compute_net(cfg, compute_dtype)?;
    let count = micro_batches.len();
    for batch in micro_batches {
        let n = cfg.train.micro_batch();
        let mine = part.range(n);
        if batch.dims[0] != mine.len() {
            return Err(Error::Invalid(format!(
                "a batch of {} examples where part {} of {} of {n} holds {}",
                batch.dims[0],
                part.index,
                part.count,
                mine.len()
            )));
        }
        // Every draw is made for the whole micro-batch of n, in one process's order, and this
        // rank keeps the draws of its examples.
        let mut labels = batch.labels.clone();
        if let (Some(y), Some(classes)) = (labels.as_mut(), cfg.model.num_classes) {
            let mut all = vec![0; n];
            all[mine.clone()].copy_from_slice(y);
            drop_labels(
                &mut all,
                classes as u32,
                cfg.train.label_dropout,
                &mut streams.labels,
            );
            y.copy_from_slice(&all[mine.clone()]);
        }
        let (x0, _) = batch.into_tensors(&device)?;
        let b = x0.dim(0)?;
        let t: Vec<usize> = (0..n)
            .map(|_| streams.timesteps.below(schedule.len()))
            .collect();
        let t = &t[mine.clone()];
        let per = x0.elem_count() / b.max(1);
        let eps = streams.noise.normal_vec(n * per);
        let eps = Tensor::from_slice(&eps[mine.start * per..mine.end * per], x0.shape(), &device)?;
        let x_t = q_sample(schedule, &x0, t, &eps)?;
        // One dropout stream per example, forked in example order, so the masks do not depend
        // on the shards. The micro-batch runs in shards (one per CPU thread); their gradients
        // weighted n_k / n add up to the micro-batch's.
        let dropout: Vec<Stream> = if cfg.model.dropout > 0.0 {
            let all: Vec<Stream> = (0..n).map(|_| streams.dropout.fork()).collect();
            all[mine.clone()].to_vec()
        } else {
            Vec::new()
        };
        let ranges = shard::ranges(b, shard::count(b, &device));
        let shards = shard::run(&ranges, |_, r| {
            let part = |x: &Tensor| x.narrow(0, r.start, r.len());
            let (x0, x_t, eps, t) = (part(&x0)?, part(&x_t)?, part(&eps)?, &t[r.clone()]);
            let mut dropout = dropout.get(r.clone()).map(<[Stream]>::to_vec);
            let labels = labels.as_ref().map(|l| &l[r.clone()]);
            let out = forward(&net, &x_t, t, labels, dropout.as_deref_mut(), compute_dtype)?;
            let terms = training_losses(
                schedule,
                cfg.diffusion.parameterization(),
                &cfg.diffusion.loss_options(),
                &out,
                &x0,
                &x_t,
                t,
                &eps,
            )?;
            let loss = terms.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    what: "the loss",
                    step: step + 1,
                    value: loss as f64,
                    kept: None,
                });
            }
            Ok((loss, terms.loss.backward()?, r.len() as f64 / n as f64))
        })?;
        let mut loss = 0f32;
        for (l, grads, weight) in shards {
            loss_sum += l * weight as f32;
            loss += l * weight as f32;
            acc.add_weighted(&grads, weight)?;
        }
        losses.push(loss);
        if let Some(sum) = ranks.as_mut() {
            sum.add(&acc.take_sums())?;
        }
    }
    if let Some(sum) = ranks {
        // The ranks' weights n_r / n, added in the order one process adds its shards' weights.
        let n = cfg.train.micro_batch();
        let weight = (0..count)
            .flat_map(|_| 0..world.size())
            .map(|r| {
                Part {
                    index: r,
                    count: world.size(),
                }
                .range(n)
                .len() as f64
                    / n as f64
            })
            .fold(0.0, |s, w| s + w);
        let (grads, all) = sum.finish(&losses)?;
        acc.set_sums(grads, weight)?;
        // `all` is rank-major; one process adds micro-batch by micro-batch.
        loss_sum = (0..count)
            .flat_map(|m| (0..world.size()).map(move |r| (m, r)))
            .fold(0f32, |s, (m, r)| s + all[r * count + m]);
    }
    let mut grads = acc.finish()?;
    // Without clipping the norm is still measured (for metrics.csv); f64::MAX never clips.
    let max_norm = cfg.optim.grad_clip.unwrap_or(f64::MAX);
    let grad_norm = state.optimizer.clip_grad_norm(&mut grads, max_norm)?;
    if !grad_norm.is_finite() {
        return Err(Error::NonFinite {
            what: "the gradient norm",
            step: step + 1,
            value: grad_norm,
            kept: None,
        });
    }
    let lr = lr_at(&cfg.optim, step, cfg.train.steps);
    state.optimizer.step(&grads, lr)?;
    state.step += 1;
    state.ema.update(state.step)?;
    Ok(StepStats {
        loss: loss_sum / count as f32,
        grad_norm,
        lr,
    })
}

/// The network output in f32 for x_t, computing in `dtype` (bf16 casts in and out);
/// `dropout`: one stream per example when the model has dropout.
fn forward(
    net: &Network,
    x_t: &Tensor,
    t: &[usize],
    labels: Option<&[u32]>,
    dropout: Option<&mut [Stream]>,
    dtype: DType,
) -> Result<Tensor> {
    let out = net.forward(&x_t.to_dtype(dtype)?, t, labels, dropout)?;
    Ok(out.to_dtype(DType::F32)?)
}
