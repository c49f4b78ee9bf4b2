//! The noise-prediction networks: the DDPM UNet (Ho et al. 2020) with its `[model]` config,
//! layers, seeded initialisation and parameter count, the MLP for vector data (`mlp`), our CPU
//! kernels (`kernels`) and the batch sharding that runs a network's examples on their threads
//! (`shard`). It knows nothing of schedules, losses or samplers; those see it only through
//! `crate::denoiser::Denoiser`.

pub mod attention;
pub mod config;
pub mod embedding;
pub mod init;
pub mod kernels;
pub mod layers;
pub mod mlp;
pub(crate) mod plan;
pub mod resblock;
pub mod shapes;
pub mod shard;
pub mod unet;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use config::{Arch, UNetConfig};
pub use init::{init_weights, num_parameters};
pub use mlp::{Mlp, MlpConfig};
pub use unet::UNet;
