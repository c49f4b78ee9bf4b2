//! Fixtures shared by the benches: the reference workloads of /work/shared/bench/WORKLOADS.md
//! (model config, image shape, batch), seeded models and batches, and one L_simple training
//! loss, so every bench and the side-by-side runner time exactly the same work.

#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ddpm::nn::{init_weights, UNet, UNetConfig};
use ddpm::rng::{Purpose, Stream};
use ddpm::schedule::{BetaSchedule, Schedule};

/// One reference workload's model and data shape.
pub struct Workload {
    pub name: &'static str,
    pub cfg: UNetConfig,
    pub channels: usize,
    pub size: usize,
    pub batch: usize,
}

impl Workload {
    /// (B, C, H, W) of one batch.
    pub fn dims(&self) -> [usize; 4] {
        [self.batch, self.channels, self.size, self.size]
    }
}

/// W1 (and W2 with `batch` 16): 3x32x32, ch 64, mult [1, 2, 2], 2 res blocks, attention at 8.
pub fn w1(batch: usize) -> Workload {
    Workload {
        name: "W1",
        cfg: UNetConfig {
            base_channels: 64,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 2,
            attention_resolutions: Some(vec![8]),
            dropout: 0.0,
            ..UNetConfig::default()
        },
        channels: 3,
        size: 32,
        batch,
    }
}

/// W3 (and W4): 1x16x16, ch 32, mult [1, 2], 1 res block, no attention, batch 64.
pub fn w3(batch: usize) -> Workload {
    Workload {
        name: "W3",
        cfg: UNetConfig {
            base_channels: 32,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: Some(vec![]),
            dropout: 0.0,
            ..UNetConfig::default()
        },
        channels: 1,
        size: 16,
        batch,
    }
}

/// What every bench process does first: the process settings `ddpm` recommends for CPU runs.
pub fn setup() {
    ddpm::nn::kernels::configure_cpu();
}

/// The model of `w` with seeded weights. The zero-initialised output layers get small seeded
/// values too, so gradients flow everywhere as they do after a few training steps.
pub fn build(w: &Workload, seed: u64) -> (VarMap, UNet) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let unet = UNet::new(vb, &w.cfg, w.channels, w.channels, (w.size, w.size)).unwrap();
    init_weights(&varmap, seed).unwrap();
    for (i, var) in varmap.all_vars().iter().enumerate() {
        if var.to_vec1_flat().iter().all(|&v| v == 0.0) && var.rank() > 1 {
            let v = Stream::new(seed, Purpose::Eval, i as u64).normal_vec(var.elem_count());
            let v: Vec<f32> = v.iter().map(|x| x * 0.01).collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    (varmap, unet)
}

trait Flat {
    fn to_vec1_flat(&self) -> Vec<f32>;
}

impl Flat for Tensor {
    fn to_vec1_flat(&self) -> Vec<f32> {
        self.flatten_all().unwrap().to_vec1().unwrap()
    }
}

/// A standard normal tensor from stream (seed, Eval, index).
pub fn randn(seed: u64, index: u64, dims: &[usize]) -> Tensor {
    Stream::new(seed, Purpose::Eval, index)
        .randn(dims, &Device::Cpu)
        .unwrap()
}

/// A fixed "data" batch x0, uniform in [-1, 1] (as ref_bench.py's `rand * 2 - 1`).
pub fn data_batch(w: &Workload, seed: u64) -> Tensor {
    let dims = w.dims();
    let mut s = Stream::new(seed, Purpose::Eval, 1 << 20);
    let v: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| (2.0 * s.uniform() - 1.0) as f32)
        .collect();
    Tensor::from_vec(v, &dims[..], &Device::Cpu).unwrap()
}

/// DDPM's training schedule: linear betas 1e-4..0.02 over T = 1000.
pub fn schedule() -> Schedule {
    Schedule::new(BetaSchedule::Linear, 1000, 1e-4, 0.02, false).unwrap()
}

/// Step `step`'s draws for the batch x0, as `ddpm train` makes them before sharding:
/// t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
pub struct Draws {
    pub t: Vec<usize>,
    pub eps: Tensor,
    pub x_t: Tensor,
}

pub fn draws(schedule: &Schedule, x0: &Tensor, step: u64) -> Draws {
    let b = x0.dim(0).unwrap();
    let mut ts = Stream::new(0, Purpose::Timesteps, step);
    let t: Vec<usize> = (0..b).map(|_| ts.below(schedule.len())).collect();
    let eps = Stream::new(0, Purpose::TrainNoise, step)
        .randn(x0.shape(), &Device::Cpu)
        .unwrap();
    let x_t = ddpm::diffusion::q_sample(schedule, x0, &t, &eps).unwrap();
    Draws { t, eps, x_t }
}

/// L_simple of one training step: mean((eps_theta(x_t, t) - eps)^2) over the batch.
pub fn l_simple(unet: &UNet, schedule: &Schedule, x0: &Tensor, step: u64) -> Tensor {
    let d = draws(schedule, x0, step);
    l_simple_part(unet, &d, 0..d.t.len())
}

/// L_simple over examples `part` of the draws `d`: one shard's mean loss.
pub fn l_simple_part(unet: &UNet, d: &Draws, part: std::ops::Range<usize>) -> Tensor {
    let (lo, n) = (part.start, part.len());
    let pred = unet
        .forward(&d.x_t.narrow(0, lo, n).unwrap(), &d.t[part], None, None)
        .unwrap();
    (pred - d.eps.narrow(0, lo, n).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
}
