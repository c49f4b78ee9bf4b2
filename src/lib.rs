//! `ddpm`: train denoising diffusion models and sample from them, on CPU or CUDA, through candle.
//!
//! The layers, bottom up: `schedule` (betas and every derived coefficient, f64), `diffusion`
//! (the forward process and parameterisations), `loss` and `vlb` (objectives), `denoiser` (the
//! trait samplers see), `sampler` (ancestral, DDIM, ...), `nn` (the UNet and the MLP), `data` and `points` (vector data), and the
//! training loop with its optimizer, EMA and checkpoints. The library never prints: long work
//! reports through callbacks.

pub mod atomic;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod denoiser;
pub mod device;
pub mod diffusion;
pub mod ema;
pub mod error;
pub mod generate;
pub mod guidance;
pub mod interop;
pub mod likelihood;
pub mod loss;
pub mod model;
pub mod nn;
pub mod optim;
pub mod oracle;
pub mod points;
pub mod precision;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod shard;
pub mod train;
pub mod vlb;

#[cfg(test)]
pub(crate) mod testing;

pub use error::{Error, Result};
