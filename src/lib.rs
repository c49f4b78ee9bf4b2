//! `ddpm`: train denoising diffusion models and sample from them, on CPU or CUDA, through candle.
//!
//! The layers, bottom up: `schedule` (betas and every derived coefficient, f64), `diffusion`
//! (the forward process and parameterisations), `loss` and `vlb` (objectives), `denoiser` (the
//! trait samplers see), `sampler` (ancestral, DDIM, ...), `nn` (the UNet, the MLP, their CPU
//! kernels and batch sharding), `points` (vector data) and `data` (datasets and the loader),
//! `optim` and `ema` over `named` variables, then `config`, `checkpoint` (what a checkpoint
//! holds) and `model` (the network a config describes), and on top `generate` and `train`,
//! which may call `generate` but not the other way round; `fid` (FID and KID with pytorch-fid's
//! Inception features) sits beside `model`. Layers import downward only; no two
//! modules import each other (tests/module_graph.rs checks it). The library never prints: long
//! work reports through callbacks.

pub mod atomic;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod denoiser;
pub mod device;
pub mod diffusion;
pub mod dist;
pub mod ema;
pub mod error;
pub mod fault;
pub mod fid;
pub mod generate;
pub mod guidance;
pub mod interop;
pub mod likelihood;
pub mod limits;
pub mod loss;
pub mod model;
pub mod named;
pub mod nn;
pub mod npy;
pub mod optim;
pub mod oracle;
pub mod plot;
pub mod points;
pub mod precision;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod train;
pub mod vlb;

#[cfg(test)]
pub(crate) mod testing;

pub use error::{Error, Result};
